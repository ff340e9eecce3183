package ptrace

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Letting a stopped process run for a while without letting go of it: a caller
// that found a thread busy where it must not be (inside a function being
// replaced) arranges for that thread to stop itself when it leaves, lets every
// thread run, and stops them all again once it did (RunUntil). The process runs
// as it would untraced, except that each signal it receives passes through
// this tracer on its way, and a job-control stop (SIGSTOP) does not hold a
// thread while it runs here.

// ErrDeadline is wrapped by RunUntil when its deadline passed first.
var ErrDeadline = errors.New("deadline passed")

// ErrCanceled is wrapped by RunUntil when its cancel channel was closed first.
var ErrCanceled = errors.New("canceled")

// ErrJobStopped is wrapped by RunUntil when the process is, or becomes, stopped by
// job control (SIGSTOP, SIGTSTP...): letting it run would override that stop.
var ErrJobStopped = errors.New("process stopped by job control")

// groupStop tells a group-stop from the other PTRACE_EVENT_STOPs (an interrupt,
// a new thread's first stop), which report SIGTRAP.
func groupStop(ws unix.WaitStatus) bool {
	return ws.StopSignal() != unix.SIGTRAP
}

// RunUntil resumes every thread of p and waits until a thread stops with its
// instruction pointer in [lo, hi) (a place that stops the thread itself, such
// as code that sends it a signal), or a thread of want exits, or deadline
// passes, or cancel is closed. A thread that stops in [lo, hi) stays stopped:
// a notify signal that stopped it is discarded, any other signal is delivered
// when it is resumed. Other stops are answered as the kernel would without a
// tracer (signals delivered, new threads let go). Whatever ended the wait,
// every thread is then stopped again, new ones included, as after Attach.
// The error wraps ErrDeadline or ErrCanceled when those ended the wait,
// ErrJobStopped when the process is stopped by job control (it is not let run)
// or was stopped so while it ran, and ErrExited or ErrExec when it went away.
func (p *Process) RunUntil(lo, hi uint64, notify int, want []int, deadline time.Time, cancel <-chan struct{}) error {
	return p.t.run(func() error {
		if p.detached {
			return ErrDetached
		}
		for _, th := range p.threads {
			if th.state == stStopped && th.groupStop {
				return fmt.Errorf("run pid %d: %w", p.Pid, ErrJobStopped)
			}
		}
		wanted := make(map[int]bool, len(want))
		for _, tid := range want {
			wanted[tid] = true
		}
		reason, err := p.runUntil(lo, hi, notify, wanted, deadline, cancel)
		if err != nil {
			return err
		}
		for _, th := range p.threads {
			if th.state == stRunning {
				if interrupt(th.tid) != nil {
					th.state = stDead
				}
			}
		}
		if err := p.stopAll(); err != nil {
			return fmt.Errorf("stop pid %d again: %w", p.Pid, err)
		}
		return reason
	})
}

// runUntil is the wait of RunUntil; a nil reason means a thread arrived.
func (p *Process) runUntil(lo, hi uint64, notify int, want map[int]bool, deadline time.Time, cancel <-chan struct{}) (reason, err error) {
	if err := p.resumeAll(); err != nil {
		return nil, err
	}
	start := time.Now()
	sleep := 20 * time.Microsecond
	for {
		arrived, jobStopped := false, false
		for i := 0; i < len(p.threads); i++ { // a clone event adds threads
			th := p.threads[i]
			if th.state != stRunning {
				continue
			}
			var ws unix.WaitStatus
			r, err := waitTid(th.tid, &ws, unix.WNOHANG)
			if errors.Is(err, unix.ECHILD) {
				th.state = stGone
				p.disturbed = true
				arrived = arrived || want[th.tid]
				continue
			}
			if err != nil || r == 0 {
				continue
			}
			if ws.Exited() || ws.Signaled() {
				th.state = stGone
				p.disturbed = true
				if th.tid == p.Pid {
					p.exited = true
				}
				arrived = arrived || want[th.tid]
				continue
			}
			if !ws.Stopped() {
				continue
			}
			switch ev := stopEvent(ws); ev {
			case eventExec:
				p.apply(th, ws)
				return nil, ErrExec
			case eventClone:
				if msg, err := eventMsg(th.tid); err == nil && msg != 0 {
					p.addThread(int(msg))
				}
				resume(th, 0)
			case 0:
				sig := int(ws.StopSignal())
				if getRegs(th.tid, &th.regs) == nil && th.regs.Rip >= lo && th.regs.Rip < hi {
					th.state, th.sigStop, th.haveRegs, th.haveMask = stStopped, true, true, false
					if sig != notify {
						th.hold(sig)
					}
					arrived = true
					continue
				}
				resume(th, sig)
			case eventStop:
				if groupStop(ws) {
					// Stopped by job control while it ran: it stays stopped, and
					// the wait ends (the other threads join the stop when let go).
					th.state, th.groupStop, th.haveRegs = stStopped, true, false
					jobStopped = true
					continue
				}
				resume(th, 0) // a new thread's first stop
			default:
				resume(th, 0)
			}
		}
		if jobStopped {
			return fmt.Errorf("wait in pid %d: %w", p.Pid, ErrJobStopped), nil
		}
		if arrived {
			return nil, nil
		}
		if len(p.Threads()) == 0 && !p.pending() {
			return nil, fmt.Errorf("pid %d: %w", p.Pid, ErrExited)
		}
		select {
		case <-cancel:
			return fmt.Errorf("wait in pid %d: %w", p.Pid, ErrCanceled), nil
		default:
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("wait in pid %d: %w", p.Pid, ErrDeadline), nil
		}
		// The tracer sleeps between sweeps: a thread it waits for stops itself and
		// stays stopped until seen, so a late look only delays, never misses.
		if time.Since(start) < 200*time.Microsecond {
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			continue
		}
		time.Sleep(sleep)
		if sleep < time.Millisecond {
			sleep *= 2
		}
	}
}

// resume lets a thread that reported a stop go on, delivering sig.
func resume(th *thread, sig int) {
	if cont(th.tid, sig) != nil {
		th.state = stDead
	}
}

// resumeAll lets every stopped thread of p run, handing back the signals held
// during injected runs.
func (p *Process) resumeAll() error {
	for _, th := range p.threads {
		if th.state != stStopped {
			continue
		}
		sig := 0
		rest := th.deferred
		if th.sigStop && len(rest) > 0 && setSigInfo(th.tid, &rest[0].info) == nil {
			sig, rest = rest[0].sig, rest[1:]
		}
		th.deferred = nil
		if err := cont(th.tid, sig); err != nil {
			if errors.Is(err, unix.ESRCH) {
				th.state = stDead
				continue
			}
			return fmt.Errorf("resume thread %d: %w", th.tid, err)
		}
		th.state, th.sigStop, th.haveRegs, th.haveMask, th.groupStop = stRunning, false, false, false, false
		for _, d := range rest {
			_ = unix.Tgkill(p.Pid, th.tid, unix.Signal(d.sig))
		}
	}
	return nil
}

// SetRegs sets the registers of stopped thread tid.
func (p *Process) SetRegs(tid int, r unix.PtraceRegs) error {
	return p.t.run(func() error {
		th, err := p.usable(tid)
		if err != nil {
			return err
		}
		if err := setRegs(tid, &r); err != nil {
			return threadErr(th, "set registers of", err)
		}
		th.regs, th.haveRegs = r, true
		return nil
	})
}

// SigMask returns the blocked-signal mask of stopped thread tid (bit n-1 for
// signal n).
func (p *Process) SigMask(tid int) (uint64, error) {
	var m uint64
	err := p.t.run(func() error {
		th, err := p.usable(tid)
		if err != nil {
			return err
		}
		if !th.haveMask {
			v, err := getSigMask(tid)
			if err != nil {
				return threadErr(th, "signal mask of", err)
			}
			th.mask, th.haveMask = v, true
		}
		m = th.mask
		return nil
	})
	return m, err
}
