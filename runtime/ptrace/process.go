package ptrace

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
)

type threadState uint8

const (
	stRunning threadState = iota // seized (or auto-attached), stop not seen yet
	stStopped                    // in a ptrace stop, usable
	stDead                       // known to be dead or dying, maybe not reaped yet
	stGone                       // reaped or detached: nothing left to do
	// stZombie: a group leader that exited while other threads live. The
	// kernel reports its death to us only when the last thread is gone, and
	// only then can its parent reap it, so the Tracer keeps collecting it.
	stZombie
)

type thread struct {
	tid   int
	proc  *Process
	state threadState
	// sigStop: the stop is a signal-delivery-stop (after an injected
	// syscall's single step), where a signal passed to PTRACE_DETACH is
	// delivered; in an event stop the kernel ignores it.
	sigStop  bool
	haveRegs bool
	regs     unix.PtraceRegs
	haveMask bool // mask holds the blocked signals (read once per attach)
	// groupStop: the stop is a job-control stop (SIGSTOP and friends), which
	// RunUntil must not override by letting the thread run.
	groupStop bool
	mask      uint64
	// inner holds the thread-group and thread ids in the thread's own pid namespace
	// (see innerIDs), read at the first injected run: they never change while traced.
	inner    [2]int
	deferred []deferredSignal
}

// deferredSignal is a signal that arrived while a syscall was being injected;
// it is suppressed then and handed back to the thread at detach.
type deferredSignal struct {
	sig  int
	info sigInfo
}

// Process is a process whose threads are all stopped by a Tracer.
type Process struct {
	Pid int

	t        *Tracer
	threads  []*thread // leader first when it is alive
	byTid    map[int]*thread
	memFd    int
	memTid   int    // tid whose /proc entries reach the memory: Pid unless the leader is a zombie
	stub     uint64 // address of the injection stub, 0 until placed
	notify   int    // notification signal of the stub, -1 until known
	detached bool
	exited   bool // the group leader's death was reported
	execed   bool
	// disturbed: a thread died or vanished while attached, so the final
	// detach double-checks the leader's tid (an execve may have moved one of
	// our tracees there).
	disturbed bool
	// watch is the exec watchdog of the attach, which tells the threads it reaped.
	watch *execWatchdog
}

// stopTimeout bounds the wait for a thread to reach its stop (a thread in an
// uninterruptible sleep stops only when the sleep ends).
const stopTimeout = 2 * time.Second

func (t *Tracer) attach(pid int) (*Process, error) {
	if _, ok := t.procs[pid]; ok {
		return nil, fmt.Errorf("attach pid %d: already attached by this tracer", pid)
	}
	if pid <= 0 {
		return nil, fmt.Errorf("attach pid %d: %w", pid, unix.EINVAL)
	}
	p := &Process{Pid: pid, t: t, byTid: map[int]*thread{}, memFd: -1, memTid: pid, notify: -1}
	t.procs[pid] = p
	if err := p.stopAll(); err != nil {
		_ = p.detach()
		return nil, fmt.Errorf("attach pid %d: %w", pid, err)
	}
	if th := p.byTid[pid]; th == nil || th.state != stStopped {
		// A zombie leader has no memory any more: /proc/PID/mem and
		// process_vm_* must name a live thread.
		p.memTid = p.Threads()[0]
	}
	return p, nil
}

// stopAll seizes and interrupts every thread, rounds of /proc/PID/task reads
// until a round finds no new thread. Once every known thread is stopped no
// thread can create another, so an unchanged list is final.
func (p *Process) stopAll() error {
	w := startExecWatchdog(p.Pid, p.t.tid)
	defer w.stop()
	p.watch = w
	for round := 0; ; round++ {
		tids, err := proc.Threads(p.Pid)
		if err != nil {
			if proc.IsGone(err) {
				return ErrExited
			}
			return err
		}
		added := 0
		for _, tid := range tids {
			if _, ok := p.byTid[tid]; ok {
				continue
			}
			added++
			if err := p.seizeThread(tid); err != nil {
				return err
			}
		}
		if added == 0 && p.vanished(tids) {
			// A thread we hold stopped is no longer listed: it was killed,
			// by a signal or by another thread's execve (which also gives
			// the leader's tid to the caller). Take the reports, and look again.
			p.pollAll()
			added = 1
		}
		if err := p.waitPending(); err != nil {
			return err
		}
		if p.execed {
			return ErrExec
		}
		if p.exited {
			return ErrExited
		}
		if added == 0 {
			break
		}
		if round > 1000 {
			return errors.New("thread list does not settle")
		}
	}
	if len(p.Threads()) == 0 {
		return ErrExited
	}
	return nil
}

// vanished reports whether a thread of p that is not known to be gone is
// missing from the task list tids.
func (p *Process) vanished(tids []int) bool {
	listed := make(map[int]bool, len(tids))
	for _, tid := range tids {
		listed[tid] = true
	}
	for _, th := range p.threads {
		if th.state != stGone && th.state != stZombie && !listed[th.tid] {
			return true
		}
	}
	return false
}

func (p *Process) seizeThread(tid int) error {
	var err error
	for try := 0; ; try++ {
		err = seize(tid)
		switch {
		case err == nil:
			p.addThread(tid)
			// ESRCH here means the thread died right after the seize; the
			// next poll reports it.
			_ = interrupt(tid)
			return nil
		case errors.Is(err, unix.ESRCH):
			// Exited between the directory read and the seize.
			p.addThread(tid).state = stGone
			if tid == p.Pid {
				return ErrExited
			}
			return nil
		case !errors.Is(err, unix.EPERM):
			return fmt.Errorf("seize thread %d: %w", tid, err)
		}
		// EPERM: already ours (a thread auto-attached through a clone event
		// not yet seen), a zombie (a group leader that called pthread_exit),
		// traced by someone else, or caught in the middle of an execve.
		tp, terr := proc.TracerPid(tid)
		if terr == nil && tp == p.t.tid {
			p.addThread(tid)
			return nil
		}
		st, serr := proc.ThreadState(p.Pid, tid)
		if serr != nil || st == 'Z' || st == 'X' {
			p.addThread(tid).state = stGone
			return nil
		}
		if terr == nil && tp != 0 {
			return fmt.Errorf("seize thread %d: %w (already traced by %d)", tid, err, tp)
		}
		if try >= 20 {
			return fmt.Errorf("seize thread %d: %w", tid, err)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// addThread registers tid as a tracee of p in state stRunning, or returns the
// existing record.
func (p *Process) addThread(tid int) *thread {
	if th, ok := p.byTid[tid]; ok {
		return th
	}
	th := &thread{tid: tid, proc: p, state: stRunning}
	p.byTid[tid] = th
	if tid == p.Pid {
		p.threads = append([]*thread{th}, p.threads...)
	} else {
		p.threads = append(p.threads, th)
	}
	return th
}

func (p *Process) pending() bool {
	for _, th := range p.threads {
		if th.state == stRunning {
			return true
		}
	}
	return false
}

// poll takes the next report of th if there is one.
func (p *Process) poll(th *thread) bool {
	var ws unix.WaitStatus
	r, err := waitTid(th.tid, &ws, unix.WNOHANG)
	switch {
	case errors.Is(err, unix.ECHILD) && p.watch.wasReaped(th.tid):
		// The thread exited and the exec watchdog collected its death.
		th.state = stGone
		p.disturbed = true
		return true
	case errors.Is(err, unix.ECHILD):
		// Not our tracee any more, with no report: the old tid of a thread
		// that called execve, or the old leader, which execve releases
		// silently.
		// A death would have been reported; a thread that vanishes without
		// a report was taken by an execve (the caller's old tid, the old
		// leader) or reaped by the exec watchdog. Either way the process
		// image we were stopping is gone.
		th.state = stGone
		p.disturbed = true
		if st, err := proc.ThreadState(p.Pid, p.Pid); err == nil && st != 'Z' && st != 'X' {
			p.execed = true
		} else {
			p.exited = true
		}
		return true
	case err != nil || r == 0:
		return false
	}
	p.apply(th, ws)
	return true
}

// pollAll takes every report available for the threads of p.
func (p *Process) pollAll() bool {
	progress := false
	for i := 0; i < len(p.threads); i++ { // apply may add threads
		th := p.threads[i]
		if th.state == stGone {
			continue
		}
		for p.poll(th) {
			progress = true
			if th.state == stGone {
				break
			}
		}
	}
	return progress
}

// waitPending waits until no thread of p is still on its way to a stop. It
// polls every thread of p (stopped ones too) rather than blocking on one:
// progress of the one awaited can depend on another's report being answered
// (a thread in execve waits for the leader, which sits in its exit stop until
// we let it go). It spins with sched_yield first, since stops usually come
// within microseconds, then backs off to sleeps.
func (p *Process) waitPending() error {
	start := time.Now()
	sleep := 20 * time.Microsecond
	for p.pending() {
		if p.pollAll() {
			continue
		}
		if p.execed {
			return nil
		}
		if th := p.pendingNonLeader(); th != nil || p.soleLeader() {
			if th == nil {
				th = p.threads[0]
			}
			// Block on one thread rather than spin: spinning holds a CPU the
			// tracees need to reach their stops. A thread other than the
			// leader reports its stop or its death without waiting on any
			// other thread, and the exec watchdog unblocks an execve.
			var ws unix.WaitStatus
			r, err := waitTid(th.tid, &ws, 0)
			switch {
			case errors.Is(err, unix.ECHILD):
				p.poll(th)
			case err == nil && r == th.tid:
				p.apply(th, ws)
			}
			continue
		}
		el := time.Since(start)
		switch {
		case el < 500*time.Microsecond:
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		case el > 2*time.Millisecond && p.zombies():
			continue
		case el > stopTimeout:
			for _, th := range p.threads {
				if th.state == stRunning {
					st, _ := proc.ThreadState(p.Pid, th.tid)
					tp, _ := proc.TracerPid(th.tid)
					return fmt.Errorf("thread %d (state %q, tracer %d): no stop within %v: %w", th.tid, st, tp, stopTimeout, unix.ETIMEDOUT)
				}
			}
		default:
			time.Sleep(sleep)
			if sleep < time.Millisecond {
				sleep *= 2
			}
		}
	}
	return nil
}

// soleLeader reports whether the only thread known is the group leader, on its way
// to a stop, and not in an uninterruptible sleep: nothing else can hold its report
// back (its clone, exec or death is reported at once), so waiting on it blocks
// rather than polls. One in an uninterruptible sleep is polled, so that the attach
// gives up after stopTimeout.
func (p *Process) soleLeader() bool {
	if len(p.threads) != 1 || p.threads[0].tid != p.Pid || p.threads[0].state != stRunning {
		return false
	}
	st, err := proc.ThreadState(p.Pid, p.Pid)
	return err == nil && st != 'D'
}

func (p *Process) pendingNonLeader() *thread {
	for _, th := range p.threads {
		if th.state == stRunning && th.tid != p.Pid {
			return th
		}
	}
	return nil
}

// zombies marks pending threads that became zombies (a leader that called
// pthread_exit, whose death is not reported while other threads live), or
// whose tid no longer names our tracee.
func (p *Process) zombies() bool {
	found := false
	for _, th := range p.threads {
		if th.state != stRunning {
			continue
		}
		if st, err := proc.ThreadState(p.Pid, th.tid); err == nil && (st == 'Z' || st == 'X') {
			th.state = stZombie
			p.t.zombies = append(p.t.zombies, th.tid)
			found = true
			continue
		}
		if tp, err := proc.TracerPid(th.tid); err != nil || tp != p.t.tid {
			// The tid now names a thread we never seized (an execve gave
			// the leader's tid to another thread): what we seized is gone.
			th.state = stGone
			p.disturbed = true
			p.execed = err == nil
			p.exited = err != nil
			found = true
		}
	}
	return found
}

// apply records one report of th. Events that need an answer during attach
// (a clone event, a signal about to be delivered, an exit) are answered here;
// the thread stepping over an injected syscall handles its own reports.
func (p *Process) apply(th *thread, ws unix.WaitStatus) {
	tid := th.tid
	th.haveRegs, th.haveMask = false, false
	th.sigStop = false
	if ws.Exited() || ws.Signaled() {
		th.state = stGone
		p.disturbed = true
		if tid == p.Pid {
			// A group leader's death is reported only once it is the last thread.
			p.exited = true
		}
		return
	}
	if !ws.Stopped() {
		return
	}
	switch stopEvent(ws) {
	case eventStop:
		// An interrupt stop, the first stop of an auto-attached thread, or
		// a group-stop (SIGSTOP and friends): all leave the thread parked.
		th.state = stStopped
		th.groupStop = groupStop(ws)
	case eventExit:
		// Not requested (see seizeOptions), but a Call may meet one.
		_ = cont(tid, 0)
		th.state = stDead
	case eventExec:
		// The thread that called execve now has the leader's tid; every
		// other thread is dead or dying.
		p.execed = true
		p.disturbed = true
		th.state = stStopped
		for _, o := range p.threads {
			if o != th && o.state != stGone {
				o.state = stDead
			}
		}
	case eventClone:
		if msg, err := eventMsg(tid); err == nil && msg != 0 {
			p.addThread(int(msg))
		}
		resumeToInterrupt(th, 0)
	case 0:
		// Signal-delivery-stop: deliver the signal now, as the kernel would
		// have, then stop again (its handler frame is set up by then, which is
		// just where the thread would be had the signal come a moment later).
		resumeToInterrupt(th, int(ws.StopSignal()))
	default:
		resumeToInterrupt(th, 0)
	}
}

// resumeToInterrupt lets a stopped thread go and asks it to stop again at its
// next chance (any ptrace stop consumes a pending interrupt).
func resumeToInterrupt(th *thread, sig int) {
	if err := cont(th.tid, sig); err != nil {
		th.state = stDead
		return
	}
	th.state = stRunning
	if err := interrupt(th.tid); err != nil {
		th.state = stDead
	}
}

// Threads returns the thread ids that are stopped and usable (exiting and
// dead threads left out), the group leader first when it is alive.
func (p *Process) Threads() []int {
	out := make([]int, 0, len(p.threads))
	for _, th := range p.threads {
		if th.state == stStopped {
			out = append(out, th.tid)
		}
	}
	return out
}

// usable returns the record of a stopped thread of p.
func (p *Process) usable(tid int) (*thread, error) {
	if p.detached {
		return nil, ErrDetached
	}
	th, ok := p.byTid[tid]
	if !ok {
		return nil, fmt.Errorf("thread %d: not a thread of pid %d", tid, p.Pid)
	}
	switch th.state {
	case stStopped:
		return th, nil
	case stDead, stGone, stZombie:
		return nil, fmt.Errorf("thread %d: %w", tid, ErrExited)
	default:
		return nil, fmt.Errorf("thread %d: not stopped", tid)
	}
}

// threadErr turns an error of a request on th into an ErrExited-wrapped one
// when the thread was killed (a stopped tracee answers ESRCH only then).
func threadErr(th *thread, what string, err error) error {
	if errors.Is(err, unix.ESRCH) {
		th.state = stDead
		return fmt.Errorf("%s thread %d: %w: %w", what, th.tid, ErrExited, err)
	}
	return fmt.Errorf("%s thread %d: %w", what, th.tid, err)
}

// Regs returns the registers of stopped thread tid (read once per stop).
func (p *Process) Regs(tid int) (unix.PtraceRegs, error) {
	var r unix.PtraceRegs
	err := p.t.run(func() error {
		th, err := p.usable(tid)
		if err != nil {
			return err
		}
		if !th.haveRegs {
			if err := getRegs(tid, &th.regs); err != nil {
				return threadErr(th, "registers of", err)
			}
			th.haveRegs = true
		}
		r = th.regs
		return nil
	})
	return r, err
}

// Detach lets every thread run again. It is idempotent, and safe after the
// process died. Signals deferred during injected syscalls are handed back.
func (p *Process) Detach() error {
	return p.t.run(p.detach)
}

func (p *Process) detach() error {
	if p.detached {
		return nil
	}
	p.detached = true
	defer delete(p.t.procs, p.Pid)
	if p.memFd >= 0 {
		unix.Close(p.memFd)
		p.memFd = -1
	}
	// A thread on its way to a stop (an attach that failed half-way) cannot
	// be detached before it stops.
	if p.pending() {
		p.drainPending()
	}
	var firstErr error
	var reap []*thread
	for _, th := range p.threads {
		switch th.state {
		case stGone, stZombie:
			continue
		case stDead, stRunning:
			reap = append(reap, th)
			continue
		}
		sig := 0
		rest := th.deferred
		if th.sigStop && len(rest) > 0 {
			// A signal-delivery-stop delivers the PTRACE_DETACH signal, with
			// the siginfo set here.
			if setSigInfo(th.tid, &rest[0].info) == nil {
				sig = rest[0].sig
				rest = rest[1:]
			}
		}
		err := detachThread(th.tid, sig)
		if errors.Is(err, unix.ESRCH) {
			// Killed while stopped: its death report is on its way.
			reap = append(reap, th)
			continue
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("detach thread %d: %w", th.tid, err)
		}
		th.state = stGone
		for _, d := range rest {
			// In an event stop the kernel ignores a detach signal: queue it
			// to the thread instead (its siginfo becomes SI_TKILL).
			_ = unix.Tgkill(p.Pid, th.tid, unix.Signal(d.sig))
		}
	}
	if p.disturbed {
		// The thread that now holds the leader's tid may be ours (seized
		// under its old tid, or by a seize that waited for the execve).
		if lt := p.byTid[p.Pid]; lt == nil || lt.state == stGone {
			if tp, err := proc.TracerPid(p.Pid); err == nil && tp == p.t.tid {
				reap = append(reap, &thread{tid: p.Pid, proc: p})
			}
		}
	}
	p.reap(reap)
	return firstErr
}

// drainPending waits a bounded time for threads still on their way to a stop.
func (p *Process) drainPending() {
	deadline := time.Now().Add(2 * time.Second)
	sleep := 20 * time.Microsecond
	for p.pending() && time.Now().Before(deadline) {
		if p.pollAll() {
			continue
		}
		time.Sleep(sleep)
		if sleep < time.Millisecond {
			sleep *= 2
		}
	}
}

// reap lets go of threads whose state is uncertain: killed while stopped,
// or never seen to stop. Each is detached as
// soon as it sits in a stop, or dropped once it is no longer our tracee (or
// its death is collected). Bounded: whatever never settles is left to the
// kernel, which detaches it when the tracer thread exits.
func (p *Process) reap(ths []*thread) {
	deadline := time.Now().Add(2 * time.Second)
	sleep := 20 * time.Microsecond
	for len(ths) > 0 {
		rest := ths[:0]
		for _, th := range ths {
			if detachThread(th.tid, 0) == nil {
				th.state = stGone
				continue
			}
			if th.tid == p.Pid && len(ths) > 1 {
				// A dying leader is reported after the others: come back.
				rest = append(rest, th)
				continue
			}
			var ws unix.WaitStatus
			r, err := waitTid(th.tid, &ws, unix.WNOHANG)
			switch {
			case err != nil: // ECHILD: no longer ours
			case r == 0 || ws.Stopped():
				// Not there yet, or just reported a stop: detach next round,
				// unless it is no longer ours at all.
				if tp, err := proc.TracerPid(th.tid); err == nil && tp == p.t.tid {
					rest = append(rest, th)
					continue
				}
			}
			th.state = stGone
		}
		ths = rest
		if len(ths) == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(sleep)
		if sleep < time.Millisecond {
			sleep *= 2
		}
	}
}

// deadErr wraps err with ErrExited when the process is no longer alive.
func (p *Process) deadErr(err error) error {
	if errors.Is(err, unix.ESRCH) || p.exited || !p.alive() {
		return fmt.Errorf("%w: %w", ErrExited, err)
	}
	return err
}

// alive reports whether any thread of p is still in its stop: a stopped
// tracee answers PTRACE_GETREGS unless it was killed. It runs on the tracer
// thread.
func (p *Process) alive() bool {
	var r unix.PtraceRegs
	for _, th := range p.threads {
		if th.state == stStopped && getRegs(th.tid, &r) == nil {
			return true
		}
	}
	return false
}

// execWatchdog breaks the one deadlock between ptrace and execve that polling
// cannot: a thread in execve holds cred_guard_mutex and waits until the other
// threads, killed by the execve, are released, which for threads we trace
// means reaped by us; PTRACE_SEIZE of that thread waits for cred_guard_mutex,
// so the tracer thread, blocked in the seize, never reaps them. Any other
// thread of this process may reap our tracees (wait4 without __WNOTHREAD), so
// while an attach runs longer than a few milliseconds a timer goroutine reaps
// the zombies we trace in the target; the execve then completes and the
// seize returns. The tracer thread sees those threads vanish (ECHILD).
//
// It also reaps threads that merely exited while the attach ran (a process that
// creates short-lived threads has many): those are recorded, so that their ECHILD
// reads as a death, not as an execve.
type execWatchdog struct {
	mu     sync.Mutex
	active bool
	timer  *time.Timer
	reaped map[int]bool
}

// wasReaped tells whether the watchdog reaped thread tid.
func (w *execWatchdog) wasReaped(tid int) bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reaped[tid]
}

const watchdogPeriod = 3 * time.Millisecond

func startExecWatchdog(pid, tracer int) *execWatchdog {
	w := &execWatchdog{active: true, reaped: map[int]bool{}}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer = time.AfterFunc(watchdogPeriod, func() {
		reaped := reapTracedZombies(pid, tracer)
		w.mu.Lock()
		for _, tid := range reaped {
			w.reaped[tid] = true
		}
		defer w.mu.Unlock()
		if w.active {
			w.timer.Reset(watchdogPeriod)
		}
	})
	return w
}

func (w *execWatchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.active = false
	w.timer.Stop()
}

func reapTracedZombies(pid, tracer int) (reaped []int) {
	tids, err := proc.Threads(pid)
	if err != nil {
		return nil
	}
	for _, tid := range tids {
		if tid == pid {
			continue // a leader is not released by reaping; execve handles it
		}
		if st, err := proc.ThreadState(pid, tid); err != nil || st != 'Z' {
			continue
		}
		if tp, err := proc.TracerPid(tid); err != nil || tp != tracer {
			continue
		}
		var ws unix.WaitStatus
		if r, err := wait4(tid, &ws, unix.WALL|unix.WNOHANG); err == nil && r == tid {
			reaped = append(reaped, tid)
		}
	}
	return reaped
}

func (t *Tracer) attachThread(pid int) (*Process, error) {
	if _, ok := t.procs[pid]; ok {
		return nil, fmt.Errorf("attach pid %d: already attached by this tracer", pid)
	}
	if pid <= 0 {
		return nil, fmt.Errorf("attach pid %d: %w", pid, unix.EINVAL)
	}
	p := &Process{Pid: pid, t: t, byTid: map[int]*thread{}, memFd: -1, memTid: pid, notify: -1}
	t.procs[pid] = p
	fail := func(err error) (*Process, error) {
		_ = p.detach()
		return nil, fmt.Errorf("attach a thread of pid %d: %w", pid, err)
	}
	tids, err := proc.Threads(pid)
	if err != nil {
		if proc.IsGone(err) {
			err = ErrExited
		}
		return fail(err)
	}
	// The last listed thread: not the leader when there are others, whose end
	// would be reported only after theirs.
	for i := len(tids) - 1; i >= 0; i-- {
		if err := p.seizeThread(tids[i]); err != nil {
			return fail(err)
		}
		if err := p.waitPending(); err != nil {
			return fail(err)
		}
		if p.execed {
			return fail(ErrExec)
		}
		if len(p.Threads()) > 0 {
			break
		}
	}
	if len(p.Threads()) == 0 {
		return fail(ErrExited)
	}
	if th := p.byTid[pid]; th == nil || th.state != stStopped {
		if st, err := proc.ThreadState(pid, pid); err != nil || st == 'Z' || st == 'X' {
			p.memTid = p.Threads()[0]
		}
	}
	return p, nil
}
