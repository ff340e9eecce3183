package ptrace

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
)

// Where the injected syscall runs.
//
// The thread's registers are pointed at a `syscall` instruction (0f 05) that
// already exists in an executable mapping, and the thread is single-stepped
// over it. Nothing in the tracee's memory is borrowed, so there is nothing to
// restore and no window in which another thread could run into borrowed
// bytes; if this tool dies mid-injection the tracee's code is intact.
//
// The instruction comes from the vDSO: every x86-64 process has one, and its
// image is the same in every process on one kernel (only its base moves with
// ASLR), so the offset of a `0f 05` in it is found once, from this process's
// own vDSO, and each tracee's vDSO base is read from /proc/PID/auxv
// (AT_SYSINFO_EHDR, a few hundred bytes) and the two bytes checked there. A
// process without a vDSO where the kernel put it (vdso=0, or remapped by a
// checkpoint/restore tool) falls back to a scan of its executable mappings.
// The two bytes need not start an instruction of the surrounding code: the
// CPU decodes from where RIP points.

var vdso struct {
	once sync.Once
	off  uint64 // offset of 0f 05 from the vDSO base
	ok   bool
}

func vdsoSyscallOffset() (uint64, bool) {
	vdso.once.Do(func() {
		base, err := auxvSysinfo(os.Getpid())
		if err != nil || base == 0 {
			return
		}
		maps, err := proc.Maps(os.Getpid())
		if err != nil {
			return
		}
		for _, m := range maps {
			if m.Start != base || !m.Executable() {
				continue
			}
			buf := make([]byte, m.End-m.Start)
			local := [1]unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}}
			remote := [1]unix.RemoteIovec{{Base: uintptr(base), Len: len(buf)}}
			if n, err := unix.ProcessVMReadv(os.Getpid(), local[:], remote[:], 0); err != nil || n != len(buf) {
				return
			}
			if i := bytes.Index(buf, []byte{0x0f, 0x05}); i >= 0 {
				vdso.off, vdso.ok = uint64(i), true
			}
			return
		}
	})
	return vdso.off, vdso.ok
}

// auxvSysinfo returns AT_SYSINFO_EHDR (the vDSO base) of pid, 0 if absent.
func auxvSysinfo(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/auxv")
	if err != nil {
		return 0, err
	}
	for i := 0; i+16 <= len(b); i += 16 {
		typ := binary.LittleEndian.Uint64(b[i:])
		if typ == 0 { // AT_NULL
			break
		}
		if typ == 33 { // AT_SYSINFO_EHDR
			return binary.LittleEndian.Uint64(b[i+8:]), nil
		}
	}
	return 0, nil
}

func (p *Process) syscallSite() (uint64, error) {
	if p.site != 0 {
		return p.site, nil
	}
	want := []byte{0x0f, 0x05}
	if off, ok := vdsoSyscallOffset(); ok {
		if base, err := auxvSysinfo(p.memTid); err == nil && base != 0 {
			var b [2]byte
			if p.ReadMem(base+off, b[:]) == nil && bytes.Equal(b[:], want) {
				p.site = base + off
				return p.site, nil
			}
		}
	}
	maps, err := proc.Maps(p.Pid)
	if err != nil {
		return 0, p.deadErr(err)
	}
	const chunk = 64 << 10
	budget := 16 << 20
	buf := make([]byte, chunk+1)
	// vDSO first (it may have moved), then everything else executable.
	for pass := 0; pass < 2; pass++ {
		for _, m := range maps {
			if !m.Executable() || (m.Path == "[vdso]") != (pass == 0) || m.Path == "[vsyscall]" {
				continue
			}
			for a := m.Start; a < m.End && budget > 0; a += chunk {
				n := m.End - a
				if n > chunk+1 {
					n = chunk + 1 // one byte of overlap catches a pair split across chunks
				}
				if p.ReadMem(a, buf[:n]) != nil {
					break
				}
				budget -= int(n)
				if i := bytes.Index(buf[:n], want); i >= 0 {
					p.site = a + uint64(i)
					return p.site, nil
				}
			}
		}
	}
	return 0, p.deadErr(fmt.Errorf("no syscall instruction found in the executable mappings of pid %d", p.Pid))
}

// Syscall runs system call nr with up to six arguments in the first usable
// thread of the process (the group leader when alive). See SyscallOn.
func (p *Process) Syscall(nr uint64, args ...uint64) (uint64, error) {
	var ret uint64
	err := p.t.run(func() error {
		ths := p.Threads()
		if p.detached {
			return ErrDetached
		}
		if len(ths) == 0 {
			return fmt.Errorf("syscall %d in pid %d: %w", nr, p.Pid, ErrExited)
		}
		// Prefer a thread other than the leader: its end is reported at once
		// if the process is killed meanwhile, so waiting for it can block.
		tid := ths[len(ths)-1]
		var err error
		ret, err = p.syscall(p.byTid[tid], nr, args)
		return err
	})
	return ret, err
}

// SyscallOn runs system call nr with up to six arguments in stopped thread
// tid, and restores the thread's registers exactly afterwards. A thread
// stopped inside a system call (a blocking read, a sleep) is fine: orig_rax is
// set to -1 for the injected call so the kernel applies no restart fix-up to
// it, and restoring the saved registers later lets the interrupted call
// restart as if nothing happened. A return value in (-4096, 0) comes back as a
// unix.Errno error. Signals that arrive meanwhile are held back and delivered
// at Detach.
func (p *Process) SyscallOn(tid int, nr uint64, args ...uint64) (uint64, error) {
	var ret uint64
	err := p.t.run(func() error {
		th, err := p.usable(tid)
		if err != nil {
			return err
		}
		ret, err = p.syscall(th, nr, args)
		return err
	})
	return ret, err
}

func (p *Process) syscall(th *thread, nr uint64, args []uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("syscall %d: %d arguments, at most 6", nr, len(args))
	}
	if th.state != stStopped {
		return 0, fmt.Errorf("syscall %d in thread %d: %w", nr, th.tid, ErrExited)
	}
	if !th.haveRegs {
		if err := getRegs(th.tid, &th.regs); err != nil {
			return 0, threadErr(th, "registers of", err)
		}
		th.haveRegs = true
	}
	site, err := p.syscallSite()
	if err != nil {
		// A killed thread leaves its stop, and then answers ESRCH.
		var probe unix.PtraceRegs
		if perr := getRegs(th.tid, &probe); perr != nil {
			return 0, threadErr(th, "registers of", perr)
		}
		return 0, err
	}
	saved := th.regs
	var a [6]uint64
	copy(a[:], args)
	r := saved
	r.Rip = site
	r.Rax = nr
	r.Orig_rax = ^uint64(0)
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := setRegs(th.tid, &r); err != nil {
		return 0, threadErr(th, "set registers of", err)
	}
	ret, err := p.step(th, site, &r)
	if err != nil {
		if th.state == stStopped {
			_ = setRegs(th.tid, &saved)
		}
		return 0, fmt.Errorf("syscall %d in thread %d of pid %d: %w", nr, th.tid, p.Pid, err)
	}
	if err := setRegs(th.tid, &saved); err != nil {
		return 0, threadErr(th, "restore registers of", err)
	}
	if int64(ret) < 0 && int64(ret) > -4096 {
		return ret, fmt.Errorf("syscall %d in thread %d of pid %d: %w", nr, th.tid, p.Pid, unix.Errno(-int64(ret)))
	}
	return ret, nil
}

// step single-steps th over the syscall instruction at site and returns rax.
func (p *Process) step(th *thread, site uint64, r *unix.PtraceRegs) (uint64, error) {
	for tries := 0; tries < 64; tries++ {
		if err := singleStep(th.tid); err != nil {
			return 0, threadErr(th, "single-step", err)
		}
		ws, err := p.waitThread(th)
		if err != nil {
			return 0, err
		}
		th.haveRegs = false
		if ws.Exited() || ws.Signaled() {
			return 0, ErrExited
		}
		ev, sig := stopEvent(ws), int(ws.StopSignal())
		switch {
		case ev == 0 && sig == int(unix.SIGTRAP):
			if err := getRegs(th.tid, r); err != nil {
				return 0, threadErr(th, "registers of", err)
			}
			// The step trap is a signal-delivery-stop of SIGTRAP; resuming
			// or detaching with signal 0 discards it.
			th.sigStop = true
			if r.Rip == site+2 {
				return r.Rax, nil
			}
			if r.Rip != site {
				return 0, fmt.Errorf("single-step ended at %#x, not after the syscall at %#x", r.Rip, site)
			}
			// A SIGTRAP from elsewhere, before the instruction ran.
			th.hold(sig)
		case ev == 0:
			// A signal about to be delivered to the injected frame: hold it.
			th.hold(sig)
		case ev == eventStop:
			// A group-stop (SIGSTOP) or a late interrupt: step again.
		case ev == eventExit:
			p.apply(th, ws)
			return 0, ErrExited
		default:
			return 0, fmt.Errorf("unexpected ptrace event %d during single-step", ev)
		}
	}
	return 0, fmt.Errorf("single-step over the syscall did not complete")
}

func (th *thread) hold(sig int) {
	d := deferredSignal{sig: sig}
	if getSigInfo(th.tid, &d.info) != nil {
		return
	}
	th.deferred = append(th.deferred, d)
}

// waitThread waits for the next report of th. It polls rather than blocks:
// th's fate can depend on the other threads' reports being answered (when
// the process is killed, th may already have been in its exit stop when it
// was resumed, and then its death is reported only after the others, held in
// their exit stops, are let go). It spins with sched_yield first, since a
// step takes microseconds, then polls the other threads too and backs off.
func (p *Process) waitThread(th *thread) (unix.WaitStatus, error) {
	if th.tid != p.Pid {
		// A thread other than the leader ends in a step trap, a signal
		// stop, or a death reported at once: blocking is safe, and leaves
		// the CPU to the tracee.
		var ws unix.WaitStatus
		_, err := waitTid(th.tid, &ws, 0)
		if err != nil {
			th.state = stDead
			return 0, fmt.Errorf("wait for thread %d: %w: %w", th.tid, ErrExited, err)
		}
		if ws.Exited() || ws.Signaled() {
			p.apply(th, ws)
		}
		return ws, nil
	}
	start := time.Now()
	sleep := 20 * time.Microsecond
	for {
		var ws unix.WaitStatus
		r, err := waitTid(th.tid, &ws, unix.WNOHANG)
		if err != nil {
			th.state = stDead
			return 0, fmt.Errorf("wait for thread %d: %w: %w", th.tid, ErrExited, err)
		}
		if r == th.tid {
			if ws.Exited() || ws.Signaled() {
				p.apply(th, ws)
			}
			return ws, nil
		}
		if time.Since(start) < 200*time.Microsecond {
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			continue
		}
		p.pollOthers(th)
		time.Sleep(sleep)
		if sleep < time.Millisecond {
			sleep *= 2
		}
	}
}

// pollOthers takes the reports of every thread of p but th.
func (p *Process) pollOthers(th *thread) {
	for i := 0; i < len(p.threads); i++ {
		o := p.threads[i]
		if o == th || o.state == stGone {
			continue
		}
		for o.state != stGone && p.poll(o) {
		}
	}
}
