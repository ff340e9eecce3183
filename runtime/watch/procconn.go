package watch

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Constants of linux/connector.h and linux/cn_proc.h.
const (
	cnIdxProc         = 1
	cnValProc         = 1
	procCnMcastListen = 1
	procCnMcastIgnore = 2
	procEventExec     = 0x2

	cnMsgLen = 20 // struct cn_msg without data
)

// procConnBackend watches exec notifications from the kernel's process-event connector. It
// needs no eBPF but is told about a process only after the new image started running.
type procConnBackend struct {
	fd   int
	file *os.File // fd wrapped for the runtime poller, so that stop interrupts a blocked read

	overflows atomic.Uint64

	mu      sync.Mutex
	targets map[uint64]*target

	// onExec, if set, sees every exec first; true means it handled the process. Guarded
	// by mu: it is set while run runs.
	onExec func(pid int, noticed int64) bool
}

func (p *procConnBackend) setOnExec(f func(pid int, noticed int64) bool) {
	p.mu.Lock()
	p.onExec = f
	p.mu.Unlock()
}

func newProcConnBackend() (*procConnBackend, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_CONNECTOR)
	if err != nil {
		return nil, fmt.Errorf("proc connector socket: %w", err)
	}
	// A burst of execs must not overflow the socket while a stopped process is being checked.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("proc connector bind: %w", err)
	}
	if err := sendMcastOp(fd, procCnMcastListen); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("proc connector listen: %w", err)
	}
	return &procConnBackend{fd: fd, file: os.NewFile(uintptr(fd), "proc-connector"), targets: make(map[uint64]*target)}, nil
}

func sendMcastOp(fd int, op uint32) error {
	var b [unix.NLMSG_HDRLEN + cnMsgLen + 4]byte
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(len(b)))       // nlmsg_len
	le.PutUint16(b[4:], unix.NLMSG_DONE)      // nlmsg_type
	le.PutUint32(b[12:], uint32(os.Getpid())) // nlmsg_pid
	le.PutUint32(b[16:], cnIdxProc)           // cn_msg.id.idx
	le.PutUint32(b[20:], cnValProc)           // cn_msg.id.val
	le.PutUint16(b[32:], 4)                   // cn_msg.len
	le.PutUint32(b[unix.NLMSG_HDRLEN+cnMsgLen:], op)
	return unix.Sendto(fd, b[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

func (p *procConnBackend) attach(t *target) error {
	p.mu.Lock()
	p.targets[t.id] = t
	p.mu.Unlock()
	return nil
}

func (p *procConnBackend) detach(t *target) error {
	p.mu.Lock()
	delete(p.targets, t.id)
	p.mu.Unlock()
	return nil
}

func (p *procConnBackend) missedCount() uint64 { return p.overflows.Load() }

func (p *procConnBackend) run(w *Watcher) {
	buf := make([]byte, 64<<10)
	for {
		n, err := p.file.Read(buf)
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				// The socket overflowed: some execs were not seen. Nothing to stop for them.
				p.overflows.Add(1)
				continue
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			d := m.Data
			if len(d) < cnMsgLen+24 || binary.LittleEndian.Uint32(d[cnMsgLen:]) != procEventExec {
				continue
			}
			pid := int(binary.LittleEndian.Uint32(d[cnMsgLen+20:])) // exec_proc_event.process_tgid
			// proc_event.timestamp_ns is ktime_get_ns at the exec, CLOCK_MONOTONIC.
			noticed := int64(binary.LittleEndian.Uint64(d[cnMsgLen+8:]))
			p.mu.Lock()
			onExec := p.onExec
			p.mu.Unlock()
			if onExec != nil && onExec(pid, noticed) {
				continue
			}
			if id, ok := p.match(pid); ok {
				w.deliver(pid, id, false, noticed)
			}
		}
	}
}

// match returns the target pid runs as its executable or has mapped as a library.
func (p *procConnBackend) match(pid int) (uint64, bool) {
	p.mu.Lock()
	var exes, libs []*target
	for _, t := range p.targets {
		if t.probe.kind == kindLibrary {
			libs = append(libs, t)
		} else {
			exes = append(exes, t)
		}
	}
	p.mu.Unlock()
	if len(exes) > 0 {
		var st unix.Stat_t
		if unix.Stat("/proc/"+strconv.Itoa(pid)+"/exe", &st) == nil {
			for _, t := range exes {
				if t.dev == st.Dev && t.ino == st.Ino {
					return t.id, true
				}
			}
		}
	}
	if len(libs) > 0 {
		return matchMaps(pid, libs)
	}
	return 0, false
}

// matchMaps looks for a mapping of one of libs in /proc/PID/maps ("addr perms off MAJ:MIN
// inode path").
func matchMaps(pid int, libs []*target) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 6 {
			continue
		}
		ino, err := strconv.ParseUint(string(f[4]), 10, 64)
		if err != nil || ino == 0 {
			continue
		}
		majS, minS, ok := bytes.Cut(f[3], []byte{':'})
		if !ok {
			continue
		}
		maj, err1 := strconv.ParseUint(string(majS), 16, 32)
		minr, err2 := strconv.ParseUint(string(minS), 16, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		for _, t := range libs {
			if t.ino == ino && uint64(unix.Major(t.dev)) == maj && uint64(unix.Minor(t.dev)) == minr {
				return t.id, true
			}
		}
	}
	return 0, false
}

func (p *procConnBackend) stop() error {
	// Tell the kernel to stop generating events for us, then interrupt the reader.
	_ = sendMcastOp(p.fd, procCnMcastIgnore)
	return p.file.Close()
}

func (p *procConnBackend) close() error { return nil }
