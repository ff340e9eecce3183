// Package journal sends log entries to systemd's journal over its native protocol (a
// datagram per entry on /run/systemd/journal/socket), so that the helper's entries carry
// a priority and fields such as PATCH or PID that `journalctl PATCH=...` selects on.
package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where journald receives native-protocol datagrams.
const DefaultSocket = "/run/systemd/journal/socket"

// Priorities, as syslog(3) numbers them.
const (
	PriErr     = 3
	PriWarning = 4
	PriNotice  = 5
	PriInfo    = 6
	PriDebug   = 7
	PriCrit    = 2
)

// Client writes entries to one journal socket.
type Client struct {
	conn *net.UnixConn
	addr *net.UnixAddr
}

// Dial opens an unbound datagram socket that sends to path.
func Dial(path string) (*Client, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "", Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("journal socket: %w", err)
	}
	return &Client{conn: conn, addr: &net.UnixAddr{Name: path, Net: "unixgram"}}, nil
}

// Close releases the socket.
func (c *Client) Close() error { return c.conn.Close() }

// Field is one journal field; names are upper case (see FieldName).
type Field struct{ Name, Value string }

// Send writes one entry. An entry too large for a datagram goes through a sealed memfd
// passed with SCM_RIGHTS, as the protocol provides.
func (c *Client) Send(fields []Field) error {
	msg := Encode(fields)
	_, _, err := c.conn.WriteMsgUnix(msg, nil, c.addr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EMSGSIZE) && !errors.Is(err, syscall.ENOBUFS) {
		return fmt.Errorf("journal send: %w", err)
	}
	return c.sendMemfd(msg)
}

func (c *Client) sendMemfd(msg []byte) error {
	fd, err := unix.MemfdCreate("journal-entry", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("journal memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "journal-entry")
	defer f.Close()
	if _, err := f.Write(msg); err != nil {
		return fmt.Errorf("journal memfd: %w", err)
	}
	// journald accepts only a memfd sealed against every change.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		return fmt.Errorf("journal memfd seal: %w", err)
	}
	if _, _, err := c.conn.WriteMsgUnix(nil, unix.UnixRights(fd), c.addr); err != nil {
		return fmt.Errorf("journal send: %w", err)
	}
	return nil
}

// Encode writes fields in the native protocol: NAME=value lines, and for a value holding
// a newline, NAME, a newline, its length as 64-bit little endian, the value and a newline.
func Encode(fields []Field) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		if strings.ContainsRune(f.Value, '\n') {
			b.WriteString(f.Name)
			b.WriteByte('\n')
			var n [8]byte
			binary.LittleEndian.PutUint64(n[:], uint64(len(f.Value)))
			b.Write(n[:])
			b.WriteString(f.Value)
			b.WriteByte('\n')
			continue
		}
		b.WriteString(f.Name)
		b.WriteByte('=')
		b.WriteString(f.Value)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Decode parses a native-protocol entry, the inverse of Encode (for tests and tools).
func Decode(msg []byte) ([]Field, error) {
	var out []Field
	for len(msg) > 0 {
		nl := bytes.IndexByte(msg, '\n')
		if nl < 0 {
			return nil, errors.New("journal entry: field without newline")
		}
		line := msg[:nl]
		if eq := bytes.IndexByte(line, '='); eq >= 0 {
			out = append(out, Field{string(line[:eq]), string(line[eq+1:])})
			msg = msg[nl+1:]
			continue
		}
		rest := msg[nl+1:]
		if len(rest) < 8 {
			return nil, fmt.Errorf("journal entry: field %q: short length", line)
		}
		n := binary.LittleEndian.Uint64(rest[:8])
		if n > uint64(len(rest)-8) || uint64(len(rest)-8)-n < 1 || rest[8+n] != '\n' {
			return nil, fmt.Errorf("journal entry: field %q: bad length %d", line, n)
		}
		out = append(out, Field{string(line), string(rest[8 : 8+n])})
		msg = rest[8+n+1:]
	}
	return out, nil
}

// FieldName turns a log field key into a journal field name: upper case letters, digits
// and underscores, not starting with an underscore (those are journald's trusted
// fields) nor a digit, at most 64 characters. It returns "" when nothing is left.
func FieldName(key string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(key) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := strings.TrimLeft(b.String(), "_0123456789")
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

// StderrIsJournal reports whether systemd connected this process's stderr to the
// journal: JOURNAL_STREAM holds the device and inode of that stream, which must be
// stderr's (a child that inherited the variable but writes elsewhere does not count).
func StderrIsJournal() bool {
	v := os.Getenv("JOURNAL_STREAM")
	dev, ino, ok := strings.Cut(v, ":")
	if !ok {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		return false
	}
	return strconv.FormatUint(st.Dev, 10) == dev && strconv.FormatUint(st.Ino, 10) == ino
}
