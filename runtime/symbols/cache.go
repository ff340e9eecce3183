package symbols

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// Cache shares parsed ELF files between callers: patching a thousand processes
// of one binary parses its symbol tables once. Entries are keyed by device,
// inode, size and modification time, so a file replaced on disk (a package
// update) is parsed again while processes still running the old inode keep
// their own entry when opened through /proc/PID/map_files.
type Cache struct {
	opts Options
	mu   sync.Mutex
	m    map[fileKey]*cacheEntry
}

type fileKey struct {
	dev, ino  uint64
	size      int64
	mtimeSec  int64
	mtimeNsec int64
}

type cacheEntry struct {
	done chan struct{}
	elf  *ELF
	err  error
}

// NewCache returns an empty cache whose files are opened with opts.
func NewCache(opts Options) *Cache {
	return &Cache{opts: opts, m: map[fileKey]*cacheEntry{}}
}

// Open returns the parsed ELF at path, parsing it only when no file with the
// same identity was parsed before. Concurrent callers for one file wait for a
// single parse. Failures are not cached.
func (c *Cache) Open(path string) (*ELF, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("open ELF %q: %w", path, &os.PathError{Op: "stat", Path: path, Err: err})
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		// A process may map a device (a container's user can put one at any path of its
		// root): never open one on its behalf, opening some devices has effects.
		return nil, fmt.Errorf("open ELF %q: not a regular file (mode %#o)", path, st.Mode)
	}
	key := fileKey{dev: st.Dev, ino: st.Ino, size: st.Size, mtimeSec: st.Mtim.Sec, mtimeNsec: st.Mtim.Nsec}
	c.mu.Lock()
	if e, ok := c.m[key]; ok {
		c.mu.Unlock()
		<-e.done
		if e.err == nil {
			return e.elf, nil
		}
		// The parse we waited for failed; try on our own.
		return Open(path, c.opts)
	}
	e := &cacheEntry{done: make(chan struct{})}
	c.m[key] = e
	c.mu.Unlock()

	e.elf, e.err = Open(path, c.opts)
	if e.err != nil {
		c.mu.Lock()
		delete(c.m, key)
		c.mu.Unlock()
	}
	close(e.done)
	return e.elf, e.err
}

// Len is the number of files held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
