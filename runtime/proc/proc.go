package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bufPool holds read buffers for /proc files; maps of a large process exceed
// 64 KiB, so buffers grow and are kept grown.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// readProcFile reads a whole /proc file into *buf (growing it) with raw
// syscalls: seq_file hands out as much as fits per read, so a typical maps file
// takes one read.
func readProcFile(path string, buf *[]byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	b := *buf
	n := 0
	for {
		if n == len(b) {
			nb := make([]byte, 2*len(b))
			copy(nb, b)
			b = nb
			*buf = b
		}
		m, err := unix.Read(fd, b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			return b[:n], nil
		}
		n += m
	}
}

// listNumeric returns the numeric entry names of a /proc directory.
func listNumeric(path string, out []int) ([]int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return out, err
	}
	defer unix.Close(fd)
	var buf [8192]byte
	for {
		n, err := unix.Getdents(fd, buf[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		b := buf[:n]
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		for len(b) >= 19 {
			reclen := int(b[16]) | int(b[17])<<8
			if reclen < 19 || reclen > len(b) {
				return out, fmt.Errorf("directory %s: %w", path, ErrMalformed)
			}
			name := b[19:reclen]
			v, ok := 0, len(name) > 0 && name[0] != 0
			for _, c := range name {
				if c == 0 {
					break
				}
				if c < '0' || c > '9' || v > 1<<30 {
					ok = false
					break
				}
				v = v*10 + int(c-'0')
			}
			if ok {
				out = append(out, v)
			}
			b = b[reclen:]
		}
	}
}

// Threads returns the thread ids of process pid (/proc/PID/task), unsorted.
func Threads(pid int) ([]int, error) {
	tids, err := listNumeric("/proc/"+strconv.Itoa(pid)+"/task", make([]int, 0, 16))
	if err != nil {
		return nil, fmt.Errorf("threads of pid %d: %w", pid, err)
	}
	return tids, nil
}

// Pids returns every process id in /proc, unsorted.
func Pids() ([]int, error) {
	pids, err := listNumeric("/proc", make([]int, 0, 512))
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	return pids, nil
}

// FileID returns the device and inode that /proc/PID/maps shows for mappings
// of path. stat's st_dev is not always what maps prints (btrfs subvolumes and
// overlayfs report other devices than the mapped inode's superblock), so a
// regular non-empty file is mapped into this process for a moment and the
// kernel's own answer is read back from /proc/self/maps; other files fall back
// to stat.
func FileID(path string) (dev, inode uint64, err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("file id of %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, fmt.Errorf("file id of %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size == 0 {
		return st.Dev, st.Ino, nil
	}
	mem, err := unix.Mmap(fd, 0, 1, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return st.Dev, st.Ino, nil
	}
	defer unix.Munmap(mem)
	addr := uint64(uintptr(unsafe.Pointer(&mem[0])))
	buf := getBuf()
	defer putBuf(buf)
	data, err := readProcFile("/proc/self/maps", buf)
	if err != nil {
		return 0, 0, fmt.Errorf("file id of %s: %w", path, err)
	}
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		start, _, ok := hexField(line, '-')
		if !ok || start != addr {
			continue
		}
		if m, ok := parseMapsLine(line); ok {
			return m.Dev, m.Inode, nil
		}
	}
	return st.Dev, st.Ino, nil
}

// mapsHas reports whether maps text contains a mapping of dev:inode. It parses
// only the columns it needs.
func mapsHas(data []byte, major, minor, inode uint64) bool {
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		// skip "start-end perms offset "
		rest := line
		for f := 0; f < 3; f++ {
			j := indexByte(rest, ' ')
			if j < 0 {
				rest = nil
				break
			}
			rest = rest[j+1:]
		}
		ma, rest, ok := hexField(rest, ':')
		if !ok || ma != major {
			continue
		}
		mi, rest, ok := hexField(rest, ' ')
		if !ok || mi != minor {
			continue
		}
		ino, _, ok := decField(rest)
		if ok && ino == inode {
			return true
		}
	}
	return false
}

// ProcessesMapping returns every process (by pid, never a thread id) that has
// a mapping of the file dev:inode, deleted files included, except the calling
// process (which cannot trace itself). Processes that exit
// while the scan runs, kernel threads and zombies are skipped. The scan reads
// maps files in parallel, one worker per CPU.
func ProcessesMapping(dev, inode uint64) ([]int, error) {
	pids, err := Pids()
	if err != nil {
		return nil, err
	}
	major, minor := uint64(unix.Major(dev)), uint64(unix.Minor(dev))
	return scanMaps(pids, func(pid int, data []byte) (int, bool) {
		return pid, mapsHas(data, major, minor, inode)
	}), nil
}

// scanMaps reads the maps file of every pid but the caller's, one worker per CPU, and
// returns what pick keeps of each. A process that vanished or whose maps we may not
// read is passed over: neither can be patched.
func scanMaps[T any](pids []int, pick func(pid int, maps []byte) (T, bool)) []T {
	self := os.Getpid()
	workers := min(runtime.GOMAXPROCS(0), len(pids))
	var next atomic.Int64
	found := make([][]T, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := getBuf()
			defer putBuf(buf)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(pids) {
					return
				}
				pid := pids[i]
				if pid == self {
					continue
				}
				data, err := readMaps(pid, buf)
				if err != nil {
					continue
				}
				if v, ok := pick(pid, data); ok {
					found[w] = append(found[w], v)
				}
			}
		}(w)
	}
	wg.Wait()
	var out []T
	for _, f := range found {
		out = append(out, f...)
	}
	return out
}

// IsGone reports whether err says that a process or thread no longer exists.
func IsGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// ThreadState returns the one-letter state of thread tid of process pid
// ('R', 'S', 'D', 'T', 't', 'Z', 'X', ...) from /proc/PID/task/TID/stat.
func ThreadState(pid, tid int) (byte, error) {
	var b [512]byte
	buf := b[:]
	p := "/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/stat"
	data, err := readSmall(p, buf)
	if err != nil {
		return 0, fmt.Errorf("state of thread %d: %w", tid, err)
	}
	// "tid (comm) S ...": comm may hold spaces and parentheses, so find the last ')'.
	for i := len(data) - 1; i >= 0; i-- {
		if data[i] == ')' {
			if i+2 < len(data) {
				return data[i+2], nil
			}
			break
		}
	}
	return 0, fmt.Errorf("state of thread %d: %w", tid, ErrMalformed)
}

// TracerPid returns the thread id of the tracer of thread tid (0 if none).
func TracerPid(tid int) (int, error) {
	var b [2048]byte
	data, err := readSmall("/proc/"+strconv.Itoa(tid)+"/status", b[:])
	if err != nil {
		return 0, fmt.Errorf("tracer of thread %d: %w", tid, err)
	}
	const key = "\nTracerPid:"
	for i := 0; i+len(key) <= len(data); i++ {
		if string(data[i:i+len(key)]) != key {
			continue
		}
		rest := data[i+len(key):]
		for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
			rest = rest[1:]
		}
		v, _, ok := decField(rest)
		if !ok {
			break
		}
		return int(v), nil
	}
	return 0, fmt.Errorf("tracer of thread %d: %w", tid, ErrMalformed)
}

// readSmall reads up to len(buf) bytes of a /proc file with one read.
func readSmall(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// CaughtSignals returns the signals process pid has handlers for (SigCgt in its
// status; bit n-1 for signal n).
func CaughtSignals(pid int) (uint64, error) {
	buf := getBuf()
	defer putBuf(buf)
	data, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/status", buf)
	if err != nil {
		return 0, fmt.Errorf("status of pid %d: %w", pid, err)
	}
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		if v, ok := bytes.CutPrefix(line, []byte("SigCgt:")); ok {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("status of pid %d: SigCgt %q: %w", pid, v, ErrMalformed)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("status of pid %d: no SigCgt: %w", pid, ErrMalformed)
}
