package proc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// BuildIDs remembers the GNU build-id of files by identity (device, inode, size,
// modification time), so that scanning a thousand processes that map the same few files
// reads each file once. A file changed in place or an inode number reused gets a new
// identity and is read again. Files that are not ELF, or carry no build-id, are
// remembered as such (nil). It is safe for concurrent use.
type BuildIDs struct {
	mu sync.Mutex
	m  map[fileKey][]byte
}

// fileKey is the identity of a file as fstat reports it.
type fileKey struct {
	dev, ino  uint64
	size      int64
	mtimeSec  int64
	mtimeNsec int64
}

func keyOf(st *unix.Stat_t) fileKey {
	return fileKey{dev: st.Dev, ino: st.Ino, size: st.Size, mtimeSec: st.Mtim.Sec, mtimeNsec: st.Mtim.Nsec}
}

// maxBuildIDFiles bounds the cache; past it, it starts over (a host has far fewer
// distinct mapped files than this).
const maxBuildIDFiles = 1 << 16

// NewBuildIDs returns an empty cache.
func NewBuildIDs() *BuildIDs { return &BuildIDs{m: map[fileKey][]byte{}} }

// defaultBuildIDs is shared by the package-level functions.
var defaultBuildIDs = NewBuildIDs()

// Len is the number of files remembered.
func (c *BuildIDs) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// File returns the build-id of the file at path (nil when it has none). The path is one
// the caller trusts (a target path of patch metadata on this host); files of other
// processes are read through Mapped or Exe instead.
func (c *BuildIDs) File(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("build-id of %s: %w", path, err)
	}
	defer unix.Close(fd)
	id, err := c.ofPathFD(fd)
	if err != nil {
		return nil, fmt.Errorf("build-id of %s: %w", path, err)
	}
	return id, nil
}

// Mapped returns the build-id of the file behind mapping m of process pid, read through
// /proc/PID/map_files: the kernel hands out the very file mapped there, whatever the
// process's root, mount namespace or later renames, so no path that a container's user
// controls is ever resolved by the caller.
func (c *BuildIDs) Mapped(pid int, m Mapping) ([]byte, error) {
	return c.viaMagicLink(MappedFile(pid, m))
}

// Exe returns the build-id of the executable of pid (/proc/PID/exe, resolved by the
// kernel like map_files).
func (c *BuildIDs) Exe(pid int) ([]byte, error) {
	return c.viaMagicLink("/proc/" + strconv.Itoa(pid) + "/exe")
}

func (c *BuildIDs) viaMagicLink(link string) ([]byte, error) {
	// O_PATH opens the link's target without opening the file itself, so a device or a
	// FIFO that a process mapped is never opened (opening some devices has effects).
	fd, err := unix.Open(link, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("build-id of %s: %w", link, err)
	}
	defer unix.Close(fd)
	id, err := c.ofPathFD(fd)
	if err != nil {
		return nil, fmt.Errorf("build-id of %s: %w", link, err)
	}
	return id, nil
}

// ofPathFD returns the build-id of the file an O_PATH descriptor refers to, from the
// cache or by reading it.
func (c *BuildIDs) ofPathFD(pfd int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, nil
	}
	key := keyOf(&st)
	c.mu.Lock()
	id, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	// Reopen the same file for reading through this process's own descriptor link:
	// it is the inode just checked, not whatever a path names now.
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil {
		return nil, err
	}
	if keyOf(&st2) != key {
		return nil, fmt.Errorf("file changed while read: %w", ErrMalformed)
	}
	id, err = readBuildID(fd, st.Size)
	if err != nil && !errors.Is(err, errNotELF) {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) >= maxBuildIDFiles {
		c.m = map[fileKey][]byte{}
	}
	c.m[key] = id
	c.mu.Unlock()
	return id, nil
}

// errNotELF says a file is not a 64-bit little-endian ELF: it has no build-id we read.
var errNotELF = errors.New("not an ELF64 little-endian file")

// Limits on what readBuildID reads from a file it does not trust.
const (
	maxProgHeaders = 256
	maxNoteBytes   = 64 << 10
)

// readBuildID reads the GNU build-id from the PT_NOTE segments of an ELF file: three or
// four small reads, where parsing the whole file with debug/elf would read every section
// header. Section headers are not consulted; every linker that writes a build-id also
// puts it in a PT_NOTE segment, which is what the running process maps.
func readBuildID(fd int, size int64) ([]byte, error) {
	var eh [64]byte
	if n, err := preadFull(fd, eh[:], 0); err != nil || n < len(eh) {
		return nil, errNotELF
	}
	if !bytes.Equal(eh[:4], []byte(elfMagic)) || eh[4] != 2 /* ELFCLASS64 */ || eh[5] != 1 /* ELFDATA2LSB */ {
		return nil, errNotELF
	}
	le := binary.LittleEndian
	phoff := le.Uint64(eh[32:])
	phentsize := uint64(le.Uint16(eh[54:]))
	phnum := uint64(le.Uint16(eh[56:]))
	if phentsize < 56 || phnum == 0 || phnum > maxProgHeaders || phoff > uint64(size) || phnum*phentsize > uint64(size)-phoff {
		return nil, nil
	}
	ph := make([]byte, phnum*phentsize)
	if n, err := preadFull(fd, ph, int64(phoff)); err != nil || n < len(ph) {
		return nil, fmt.Errorf("program headers: %w", elfsafe.ErrTruncated)
	}
	for i := uint64(0); i < phnum; i++ {
		p := ph[i*phentsize:]
		if le.Uint32(p[0:]) != 4 { // PT_NOTE
			continue
		}
		off, filesz := le.Uint64(p[8:]), le.Uint64(p[32:])
		if filesz == 0 || filesz > maxNoteBytes || off > uint64(size) || filesz > uint64(size)-off {
			continue
		}
		note := make([]byte, filesz)
		if n, err := preadFull(fd, note, int64(off)); err != nil || n < len(note) {
			continue
		}
		if id := elfsafe.FindBuildIDNote(note, le); id != nil {
			return id, nil
		}
	}
	return nil, nil
}

const elfMagic = "\x7fELF"

func preadFull(fd int, b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Pread(fd, b[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}
