package proc

import (
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNoQuery is returned by OpenQuery where the kernel cannot answer single-mapping
// queries (PROCMAP_QUERY came with Linux 6.11).
var ErrNoQuery = errors.New("PROCMAP_QUERY not supported")

// Query asks the kernel for the one mapping of a process that covers an address
// (the PROCMAP_QUERY ioctl on /proc/PID/maps): a few microseconds, where reading all
// of maps costs a line of text per mapping. Mappings it returns have no Path.
type Query struct {
	fd  int
	pid int
}

// procmapQuery is the kernel's struct procmap_query.
type procmapQuery struct {
	size, flags, addr            uint64
	start, end, vmaFlags, pgSize uint64
	offset, inode                uint64
	devMajor, devMinor           uint32
	nameSize, buildIDSize        uint32
	nameAddr, buildIDAddr        uint64
}

// _IOWR('f', 17, struct procmap_query)
const procmapQueryIoctl = 3<<30 | uint64(unsafe.Sizeof(procmapQuery{}))<<16 | 'f'<<8 | 17

const (
	vmaReadable   = 1
	vmaWritable   = 2
	vmaExecutable = 4
	vmaShared     = 8
)

// OpenQuery opens /proc/PID/maps for queries; ErrNoQuery if the kernel has none.
func OpenQuery(pid int) (*Query, error) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/maps", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("maps of pid %d: %w", pid, err)
	}
	q := &Query{fd: fd, pid: pid}
	// Probe with an address no process maps.
	if _, _, err := q.At(0); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// At returns the mapping that covers addr; ok is false when none does.
func (q *Query) At(addr uint64) (m Mapping, ok bool, err error) {
	pq := procmapQuery{size: uint64(unsafe.Sizeof(procmapQuery{})), addr: addr}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(q.fd), uintptr(procmapQueryIoctl), uintptr(unsafe.Pointer(&pq)))
	switch e {
	case 0:
	case unix.ENOENT:
		return Mapping{}, false, nil
	case unix.ENOTTY, unix.EINVAL:
		return Mapping{}, false, ErrNoQuery
	default:
		return Mapping{}, false, fmt.Errorf("maps of pid %d at %#x: %w", q.pid, addr, e)
	}
	perms := []byte("---p")
	for i, bit := range []uint64{vmaReadable, vmaWritable, vmaExecutable} {
		if pq.vmaFlags&bit != 0 {
			perms[i] = "rwx"[i]
		}
	}
	if pq.vmaFlags&vmaShared != 0 {
		perms[3] = 's'
	}
	return Mapping{Start: pq.start, End: pq.end, Offset: pq.offset, Perms: string(perms),
		Dev: unix.Mkdev(pq.devMajor, pq.devMinor), Inode: pq.inode}, true, nil
}

// Close releases the descriptor.
func (q *Query) Close() {
	if q != nil && q.fd >= 0 {
		unix.Close(q.fd)
		q.fd = -1
	}
}
