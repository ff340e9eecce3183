package ptrace

import (
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Write is one write into the tracee's memory.
type Write struct {
	Addr uint64
	Data []byte
}

// ReadMem fills buf from the tracee's memory at addr. process_vm_readv needs
// no ptrace relation, so it runs on the caller's thread; pages it cannot read
// (PROT_NONE, execute-only) are read through /proc/PID/mem, which forces access.
func (p *Process) ReadMem(addr uint64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	local := [1]unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
	remote := [1]unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(p.memTid, local[:], remote[:], 0)
	if err == nil && n == len(buf) {
		return nil
	}
	if err == unix.ESRCH {
		return fmt.Errorf("read memory of pid %d at %#x: %w: %w", p.Pid, addr, ErrExited, err)
	}
	if n < 0 {
		n = 0
	}
	return p.t.run(func() error {
		if err := p.pread(addr+uint64(n), buf[n:]); err != nil {
			return fmt.Errorf("read memory of pid %d at %#x: %w", p.Pid, addr, err)
		}
		return nil
	})
}

// WriteMem writes data at addr through /proc/PID/mem, which writes into
// read-only and r-x mappings too (the kernel forces the access, as for a
// debugger setting a breakpoint). It runs on the tracer thread because a
// kernel built with CONFIG_PROC_MEM_FORCE_PTRACE forces the access only for
// the tracer itself.
func (p *Process) WriteMem(addr uint64, data []byte) error {
	return p.WriteMemv([]Write{{Addr: addr, Data: data}})
}

// WriteMemv performs several writes with as few system calls as it can: one
// process_vm_writev for all of them, which succeeds for writable mappings,
// then one /proc/PID/mem write per remaining write (or per run of adjacent
// ones) for those it could not do, such as jumps into r-x text. Put writes to
// writable memory first to get the most from the first call.
func (p *Process) WriteMemv(writes []Write) error {
	return p.t.run(func() error { return p.writev(writes) })
}

func (p *Process) writev(writes []Write) error {
	if p.detached {
		return ErrDetached
	}
	// Drop empty writes: an iovec of length 0 carries no base pointer.
	ws := make([]Write, 0, len(writes))
	for _, w := range writes {
		if len(w.Data) > 0 {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return nil
	}
	done := 0 // bytes done of the write at index i
	i := 0
	if len(ws) <= 1024 { // IOV_MAX
		local := make([]unix.Iovec, len(ws))
		remote := make([]unix.RemoteIovec, len(ws))
		for k, w := range ws {
			local[k] = unix.Iovec{Base: &w.Data[0], Len: uint64(len(w.Data))}
			remote[k] = unix.RemoteIovec{Base: uintptr(w.Addr), Len: len(w.Data)}
		}
		n, err := unix.ProcessVMWritev(p.memTid, local, remote, 0)
		if err == unix.ESRCH {
			return fmt.Errorf("write memory of pid %d: %w: %w", p.Pid, ErrExited, err)
		}
		for n > 0 && i < len(ws) {
			if n >= len(ws[i].Data) {
				n -= len(ws[i].Data)
				i++
				continue
			}
			done = n
			n = 0
		}
	}
	for i < len(ws) {
		// Merge a run of adjacent writes into one pwrite.
		addr := ws[i].Addr + uint64(done)
		data := ws[i].Data[done:]
		j := i + 1
		end := ws[i].Addr + uint64(len(ws[i].Data))
		if j < len(ws) && ws[j].Addr == end {
			buf := append([]byte(nil), data...)
			for j < len(ws) && ws[j].Addr == end {
				buf = append(buf, ws[j].Data...)
				end += uint64(len(ws[j].Data))
				j++
			}
			data = buf
		}
		if err := p.pwrite(addr, data); err != nil {
			return fmt.Errorf("write memory of pid %d at %#x: %w", p.Pid, addr, err)
		}
		i, done = j, 0
	}
	return nil
}

// memFile opens /proc/PID/mem once per attach.
func (p *Process) memFile() (int, error) {
	if p.detached {
		return -1, ErrDetached
	}
	if p.memFd >= 0 {
		return p.memFd, nil
	}
	fd, err := unix.Open("/proc/"+strconv.Itoa(p.memTid)+"/mem", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, p.deadErr(err)
	}
	p.memFd = fd
	return fd, nil
}

func (p *Process) pwrite(addr uint64, data []byte) error { return p.memIO(pwriteAt, addr, data) }

func (p *Process) pread(addr uint64, buf []byte) error { return p.memIO(preadAt, addr, buf) }

// memIO runs a pread or pwrite on /proc/PID/mem until all of b is done.
func (p *Process) memIO(op func(fd int, b []byte, off uint64) (int, error), addr uint64, b []byte) error {
	fd, err := p.memFile()
	if err != nil {
		return err
	}
	for len(b) > 0 {
		n, err := op(fd, b, addr)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return p.deadErr(err)
		}
		if n == 0 {
			// The mm is gone (the process exited) or the range is unmapped.
			return p.deadErr(unix.EIO)
		}
		b = b[n:]
		addr += uint64(n)
	}
	return nil
}

// pwriteAt and preadAt take the offset as a uint64: addresses above 2^63
// (none on x86-64 user space, but the kernel's file offset is unsigned for
// /proc/PID/mem) must not be rejected as negative by a wrapper.
func pwriteAt(fd int, b []byte, off uint64) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_PWRITE64, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(off), 0, 0)
	return int(r), errnoErr(e)
}

func preadAt(fd int, b []byte, off uint64) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_PREAD64, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(off), 0, 0)
	return int(r), errnoErr(e)
}

// ReadMemv fills each bufs[i] from the tracee's memory at addrs[i] with one
// process_vm_readv; when that cannot read everything (a PROT_NONE page, a read
// that crosses into an unmapped one) it falls back to ReadMem per buffer.
func (p *Process) ReadMemv(addrs []uint64, bufs [][]byte) error {
	if len(addrs) != len(bufs) {
		return fmt.Errorf("read memory: %d addresses for %d buffers", len(addrs), len(bufs))
	}
	local := make([]unix.Iovec, 0, len(bufs))
	remote := make([]unix.RemoteIovec, 0, len(bufs))
	total := 0
	for i, b := range bufs {
		if len(b) == 0 {
			continue
		}
		local = append(local, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
		remote = append(remote, unix.RemoteIovec{Base: uintptr(addrs[i]), Len: len(b)})
		total += len(b)
	}
	if total == 0 {
		return nil
	}
	if len(local) <= 1024 { // IOV_MAX
		n, err := unix.ProcessVMReadv(p.memTid, local, remote, 0)
		if err == nil && n == total {
			return nil
		}
		if err == unix.ESRCH {
			return fmt.Errorf("read memory of pid %d: %w: %w", p.Pid, ErrExited, err)
		}
	}
	for i, b := range bufs {
		if err := p.ReadMem(addrs[i], b); err != nil {
			return err
		}
	}
	return nil
}

// Remote reads the memory of a process this package has not stopped:
// process_vm_readv needs ptrace-read permission, not a tracer, so a process can
// be looked at (for instance for the patches it holds) without stopping it.
type Remote struct{ Pid int }

// ReadMem fills buf from the process's memory at addr.
func (r Remote) ReadMem(addr uint64, buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	local := [1]unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
	remote := [1]unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(r.Pid, local[:], remote[:], 0)
	if err == unix.ESRCH {
		return fmt.Errorf("read memory of pid %d at %#x: %w: %w", r.Pid, addr, ErrExited, err)
	}
	if err != nil {
		return fmt.Errorf("read memory of pid %d at %#x: %w", r.Pid, addr, err)
	}
	if n != len(buf) {
		return fmt.Errorf("read memory of pid %d at %#x: %d of %d bytes", r.Pid, addr, n, len(buf))
	}
	return nil
}
