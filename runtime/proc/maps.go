// Package proc reads process facts from /proc: mappings, threads, processes mapping a file
// (by device and inode, or by GNU build-id in any mount namespace), and where a process
// runs (mount namespace, container).
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrMalformed is wrapped by errors about /proc text that does not parse.
var ErrMalformed = errors.New("malformed /proc data")

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End, Offset uint64
	Perms              string // "r-xp"
	Dev                uint64 // unix.Mkdev(major, minor) as printed in maps
	Inode              uint64
	// Path is "" for anonymous memory; pseudo paths such as "[stack]" and "[vdso]"
	// are kept as printed; the " (deleted)" suffix is stripped into Deleted.
	Path    string
	Deleted bool
}

// Readable, Writable, Executable and Private report the permission letters.
func (m Mapping) Readable() bool   { return len(m.Perms) > 0 && m.Perms[0] == 'r' }
func (m Mapping) Writable() bool   { return len(m.Perms) > 1 && m.Perms[1] == 'w' }
func (m Mapping) Executable() bool { return len(m.Perms) > 2 && m.Perms[2] == 'x' }
func (m Mapping) Private() bool    { return len(m.Perms) > 3 && m.Perms[3] == 'p' }

// IsFile reports whether the mapping is backed by a file (inode != 0).
func (m Mapping) IsFile() bool { return m.Inode != 0 }

const deletedSuffix = " (deleted)"

// Maps returns the mappings of process pid, in address order. A process whose
// group leader exited (pthread_exit in main) shows no mappings under
// /proc/PID; they are read through one of its live threads then.
func Maps(pid int) ([]Mapping, error) {
	buf := getBuf()
	defer putBuf(buf)
	data, err := readMaps(pid, buf)
	if err != nil {
		return nil, fmt.Errorf("maps of pid %d: %w", pid, err)
	}
	ms, err := ParseMaps(data)
	if err != nil {
		return nil, fmt.Errorf("maps of pid %d: %w", pid, err)
	}
	return ms, nil
}

// readMaps reads /proc/PID/maps, or a live thread's when the leader is a
// zombie (kernel threads have empty maps too, and only themselves as thread).
func readMaps(pid int, buf *[]byte) ([]byte, error) {
	data, err := readProcFile(mapsPath(pid), buf)
	if err != nil || len(data) > 0 {
		return data, err
	}
	tids, terr := listNumeric("/proc/"+strconv.Itoa(pid)+"/task", nil)
	if terr != nil {
		return data, nil
	}
	for _, tid := range tids {
		if tid == pid {
			continue
		}
		if d, err := readProcFile(mapsPath(tid), buf); err == nil && len(d) > 0 {
			return d, nil
		}
	}
	return data, nil
}

// ParseMaps parses the text of a /proc/PID/maps file. Perms strings of the
// usual four letters share storage, so parsing allocates little beyond the paths.
func ParseMaps(data []byte) ([]Mapping, error) {
	out := make([]Mapping, 0, bytes.Count(data, []byte{'\n'})+1)
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		line, data = nextLine(data)
		if len(line) == 0 {
			continue
		}
		m, ok := parseMapsLine(line)
		if !ok {
			return nil, fmt.Errorf("line %d %q: %w", lineNo, truncate(line), ErrMalformed)
		}
		out = append(out, m)
	}
	return out, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

func indexByte(b []byte, c byte) int { return bytes.IndexByte(b, c) }

// nextLine splits the first line (without its newline) off text read from /proc.
func nextLine(data []byte) (line, rest []byte) {
	if i := indexByte(data, '\n'); i >= 0 {
		return data[:i], data[i+1:]
	}
	return data, nil
}

// hexField parses lowercase or uppercase hex digits up to a terminator byte.
// It returns the value, the rest after the terminator, and whether it parsed.
func hexField(b []byte, term byte) (uint64, []byte, bool) {
	var v uint64
	i := 0
	for ; i < len(b) && b[i] != term; i++ {
		c := b[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, nil, false
		}
		if v>>60 != 0 {
			return 0, nil, false // overflow
		}
		v = v<<4 | uint64(d)
	}
	if i == 0 || i >= len(b) {
		return 0, nil, false
	}
	return v, b[i+1:], true
}

func decField(b []byte) (uint64, []byte, bool) {
	var v uint64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := uint64(b[i] - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, nil, false
		}
		v = v*10 + d
	}
	if i == 0 {
		return 0, nil, false
	}
	return v, b[i:], true
}

// permsTable interns the sixteen usual permission strings, indexed by
// permsIndex, so parsing does not allocate them.
var permsTable = func() (t [16]string) {
	for i := range t {
		b := []byte("----")
		if i&8 != 0 {
			b[0] = 'r'
		}
		if i&4 != 0 {
			b[1] = 'w'
		}
		if i&2 != 0 {
			b[2] = 'x'
		}
		if i&1 != 0 {
			b[3] = 's'
		} else {
			b[3] = 'p'
		}
		t[i] = string(b)
	}
	return t
}()

func permsIndex(b []byte) int {
	if len(b) != 4 {
		return -1
	}
	i := 0
	for k, set := range [3]byte{'r', 'w', 'x'} {
		switch b[k] {
		case set:
			i |= 8 >> k
		case '-':
		default:
			return -1
		}
	}
	switch b[3] {
	case 's':
		i |= 1
	case 'p':
	default:
		return -1
	}
	return i
}

// parseMapsLine parses "start-end perms offset major:minor inode   path".
func parseMapsLine(line []byte) (Mapping, bool) {
	var m Mapping
	var ok bool
	if m.Start, line, ok = hexField(line, '-'); !ok {
		return m, false
	}
	if m.End, line, ok = hexField(line, ' '); !ok {
		return m, false
	}
	sp := indexByte(line, ' ')
	if sp <= 0 {
		return m, false
	}
	if i := permsIndex(line[:sp]); i >= 0 {
		m.Perms = permsTable[i]
	} else {
		m.Perms = string(line[:sp])
	}
	line = line[sp+1:]
	if m.Offset, line, ok = hexField(line, ' '); !ok {
		return m, false
	}
	var major, minor uint64
	if major, line, ok = hexField(line, ':'); !ok {
		return m, false
	}
	if minor, line, ok = hexField(line, ' '); !ok {
		return m, false
	}
	if major > 0xfff || minor > 0xfffff { // kernel dev_t is 12:20 bits
		return m, false
	}
	m.Dev = unix.Mkdev(uint32(major), uint32(minor))
	if m.Inode, line, ok = decField(line); !ok {
		return m, false
	}
	// The path column is padded with spaces; a path itself may contain spaces.
	i := 0
	for i < len(line) && line[i] == ' ' {
		i++
	}
	if i == 0 && len(line) > 0 {
		return m, false
	}
	path := line[i:]
	if n := len(path) - len(deletedSuffix); n >= 0 && string(path[n:]) == deletedSuffix {
		m.Deleted = true
		path = path[:n]
	}
	if len(path) > 0 {
		m.Path = string(path)
	}
	return m, true
}

// Format renders m the way the kernel prints it in /proc/PID/maps (without the
// column padding). Tests and diagnostics use it.
func (m Mapping) Format() string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(m.Start, 16))
	b.WriteByte('-')
	b.WriteString(strconv.FormatUint(m.End, 16))
	b.WriteByte(' ')
	b.WriteString(m.Perms)
	fmt.Fprintf(&b, " %08x %02x:%02x %d", m.Offset, unix.Major(m.Dev), unix.Minor(m.Dev), m.Inode)
	if m.Path != "" || m.Deleted {
		b.WriteByte(' ')
		b.WriteString(m.Path)
		if m.Deleted {
			b.WriteString(deletedSuffix)
		}
	}
	return b.String()
}

// MappedFile returns the /proc/PID/map_files path of m. Opening it opens the
// exact file mapped there, even when it was deleted or replaced on disk.
// When the group leader has exited, the path goes through a live thread.
func MappedFile(pid int, m Mapping) string {
	p := mappedFile(pid, m)
	var st unix.Stat_t
	if unix.Lstat(p, &st) == nil {
		return p
	}
	if tids, err := listNumeric("/proc/"+strconv.Itoa(pid)+"/task", nil); err == nil {
		for _, tid := range tids {
			if q := mappedFile(tid, m); tid != pid && unix.Lstat(q, &st) == nil {
				return q
			}
		}
	}
	return p
}

// StatMapped is MappedFile with the stat(2) of the file it names, found with one
// stat where the group leader is alive (MappedFile checks the path first, and the
// caller would stat it again).
func StatMapped(pid int, m Mapping) (string, unix.Stat_t, error) {
	var st unix.Stat_t
	p := mappedFile(pid, m)
	err := unix.Stat(p, &st)
	if err == nil {
		return p, st, nil
	}
	if q := MappedFile(pid, m); q != p {
		if err = unix.Stat(q, &st); err == nil {
			return q, st, nil
		}
	}
	return p, st, &os.PathError{Op: "stat", Path: p, Err: err}
}

func mappedFile(pid int, m Mapping) string {
	b := make([]byte, 0, 64)
	b = append(b, "/proc/"...)
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, "/map_files/"...)
	b = strconv.AppendUint(b, m.Start, 16)
	b = append(b, '-')
	b = strconv.AppendUint(b, m.End, 16)
	return string(b)
}

// Exe returns the path of the executable of pid, without the " (deleted)"
// suffix the kernel adds when the file was removed.
func Exe(pid int) (string, error) {
	p, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		// A zombie leader has no executable link; a live thread has.
		if tids, terr := listNumeric("/proc/"+strconv.Itoa(pid)+"/task", nil); terr == nil {
			for _, tid := range tids {
				if tid == pid {
					continue
				}
				if q, qerr := os.Readlink("/proc/" + strconv.Itoa(tid) + "/exe"); qerr == nil {
					return strings.TrimSuffix(q, deletedSuffix), nil
				}
			}
		}
		return "", fmt.Errorf("executable of pid %d: %w", pid, err)
	}
	return strings.TrimSuffix(p, deletedSuffix), nil
}

func mapsPath(pid int) string {
	b := make([]byte, 0, 24)
	b = append(b, "/proc/"...)
	b = strconv.AppendInt(b, int64(pid), 10)
	b = append(b, "/maps"...)
	return string(b)
}
