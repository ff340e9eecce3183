package ptrace

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// callTimeout bounds a remote call: the called code runs while every other thread
// is stopped, so code waiting for a lock another thread holds would never return.
const callTimeout = time.Second

// Call runs the function at fn in the process, with up to six integer arguments,
// on its first stopped thread, and returns rax. It is meant for small self-contained
// functions such as the IFUNC resolvers of glibc (which only read CPU features).
//
// The call returns to address 0: the thread faults with SIGSEGV at rip 0, which is
// how the tracer knows the function returned; the signal is discarded and every
// register is restored. The frame is built 512 bytes below the thread's stack pointer,
// past the 128-byte red zone the interrupted code may be using.
func (p *Process) Call(fn uint64, args ...uint64) (uint64, error) {
	var ret uint64
	err := p.t.run(func() error {
		if p.detached {
			return ErrDetached
		}
		ths := p.Threads()
		if len(ths) == 0 {
			return fmt.Errorf("call %#x in pid %d: %w", fn, p.Pid, ErrExited)
		}
		var err error
		ret, err = p.call(p.byTid[ths[0]], fn, args)
		return err
	})
	return ret, err
}

func (p *Process) call(th *thread, fn uint64, args []uint64) (uint64, error) {
	if len(args) > 6 {
		return 0, fmt.Errorf("call %#x: %d arguments, at most 6", fn, len(args))
	}
	if !th.haveRegs {
		if err := getRegs(th.tid, &th.regs); err != nil {
			return 0, threadErr(th, "registers of", err)
		}
		th.haveRegs = true
	}
	saved := th.regs
	r := saved
	r.Rsp = (saved.Rsp-512)&^15 - 8 // at entry, rsp+8 is 16-byte aligned
	var zero [8]byte
	binary.LittleEndian.PutUint64(zero[:], 0)
	if err := p.WriteMem(r.Rsp, zero[:]); err != nil {
		return 0, fmt.Errorf("call %#x: write return address: %w", fn, err)
	}
	var a [6]uint64
	copy(a[:], args)
	r.Rip, r.Rax, r.Orig_rax = fn, 0, ^uint64(0)
	r.Rdi, r.Rsi, r.Rdx, r.Rcx, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := setRegs(th.tid, &r); err != nil {
		return 0, threadErr(th, "set registers of", err)
	}
	restore := func() error {
		if err := setRegs(th.tid, &saved); err != nil {
			return threadErr(th, "restore registers of", err)
		}
		th.regs, th.haveRegs = saved, true
		return nil
	}
	sig := 0
	deadline := time.Now().Add(callTimeout)
	for {
		if err := cont(th.tid, sig); err != nil {
			return 0, threadErr(th, "resume", err)
		}
		sig = 0
		ws, err := p.waitCall(th, deadline)
		if err != nil {
			return 0, err
		}
		if ws.Exited() || ws.Signaled() {
			th.state = stDead
			return 0, fmt.Errorf("call %#x in pid %d: %w", fn, p.Pid, ErrExited)
		}
		ev, s := stopEvent(ws), ws.StopSignal()
		switch {
		case ev == 0 && s == unix.SIGSEGV:
			var got unix.PtraceRegs
			if err := getRegs(th.tid, &got); err != nil {
				return 0, threadErr(th, "registers of", err)
			}
			th.sigStop = true
			if got.Rip != 0 {
				_ = restore()
				return 0, fmt.Errorf("call %#x in pid %d: segmentation fault at %#x", fn, p.Pid, got.Rip)
			}
			return got.Rax, restore()
		case ev == 0:
			th.hold(int(s)) // another signal: keep it for detach, go on
		case ev == eventStop:
			if time.Now().After(deadline) {
				_ = restore()
				return 0, fmt.Errorf("call %#x in pid %d: no return within %v", fn, p.Pid, callTimeout)
			}
		case ev == eventExit:
			p.apply(th, ws)
			return 0, fmt.Errorf("call %#x in pid %d: %w", fn, p.Pid, ErrExited)
		default:
			_ = restore()
			return 0, fmt.Errorf("call %#x: unexpected ptrace event %d", fn, ev)
		}
	}
}

// waitCall waits for th's next stop, interrupting it when the deadline passes.
func (p *Process) waitCall(th *thread, deadline time.Time) (unix.WaitStatus, error) {
	interrupted := false
	for {
		var ws unix.WaitStatus
		tid, err := waitTid(th.tid, &ws, unix.WNOHANG)
		if err != nil {
			th.state = stDead
			return 0, fmt.Errorf("wait for thread %d: %w: %w", th.tid, ErrExited, err)
		}
		if tid == th.tid {
			return ws, nil
		}
		p.pollOthers(th)
		if !interrupted && time.Now().After(deadline) {
			_ = interrupt(th.tid)
			interrupted = true
		}
		time.Sleep(20 * time.Microsecond)
	}
}
