package ptrace

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrExited is wrapped whenever the tracee died during an operation.
var ErrExited = errors.New("process exited")

// ErrExec is wrapped when the tracee replaced its image (execve by one of its
// threads) during an operation; it also wraps ErrExited, since the process
// image that was being worked on is gone.
var ErrExec = fmt.Errorf("process image replaced by execve: %w", ErrExited)

// ErrClosed is returned by requests made after Close.
var ErrClosed = errors.New("tracer closed")

// ErrDetached is returned by requests on a Process after Detach.
var ErrDetached = errors.New("process detached")

// Tracer runs ptrace requests on one locked OS thread.
type Tracer struct {
	tid   int           // OS thread id of the tracer goroutine, set before ready closes
	ready chan struct{} // closed once the thread runs
	reqs  chan request
	quit  chan struct{}
	done  chan struct{}

	// Owned by the tracer thread.
	procs   map[int]*Process // attached processes, by pid
	zombies []int            // traced zombie leaders whose death report is due
	stubs   map[int]uint64   // where the injection stub was put, by pid
	// notifies: the stub's notification signal, by pid (see notifySignal)
	notifies map[int]int
}

type request struct {
	fn   func() error
	done chan error
}

// tracerNice is the nice value of tracer threads.
const tracerNice = -10

// NewTracer starts a tracer thread. Close it when done.
//
// It returns without waiting for the thread: starting one (a new OS thread for
// the Go runtime, then its priority) takes a few hundred microseconds that the
// caller spends on its own preparation, such as reading the target's files; the
// first request waits for the thread if needed.
func NewTracer() *Tracer {
	t := &Tracer{
		ready: make(chan struct{}),
		reqs:  make(chan request),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
		procs: map[int]*Process{},
		stubs: map[int]uint64{},

		notifies: map[int]int{},
	}
	go t.loop(t.ready)
	return t
}

func (t *Tracer) loop(ready chan<- struct{}) {
	// The goroutine never unlocks: when it returns, the Go runtime ends the
	// thread, and the kernel detaches anything still traced by it, so even a
	// forgotten Process is never left stopped.
	runtime.LockOSThread()
	t.tid = unix.Gettid()
	// A freeze is a chain of handoffs between this thread and the tracees, and
	// each tracee woken (interrupted, resumed, detached) may preempt this thread
	// on a busy machine, stretching the freeze. A higher weight for this one
	// thread (it sleeps in wait4 whenever a tracee has work to do) keeps it on
	// its CPU. Allowed for root only; otherwise it runs at the default.
	_ = unix.Setpriority(unix.PRIO_PROCESS, t.tid, tracerNice)
	close(ready)
	defer close(t.done)
	for {
		select {
		case r := <-t.reqs:
			r.done <- r.fn()
		case <-t.quit:
			for _, p := range t.procs {
				_ = p.detach()
			}
			t.reapZombies()
			return
		}
	}
}

// Close detaches every process still attached and ends the tracer thread.
// It is idempotent.
func (t *Tracer) Close() {
	select {
	case <-t.quit:
	default:
		close(t.quit)
	}
	<-t.done
}

// Do runs fn on the tracer thread. Process methods called inside fn run
// directly, without a handoff; this is how a caller keeps a freeze short.
func (t *Tracer) Do(fn func() error) error { return t.run(fn) }

// run executes fn on the tracer thread: directly when already there (the
// locked goroutine is the only one that ever runs on that thread, so the
// thread id identifies it), else by handing it over.
func (t *Tracer) run(fn func() error) error {
	<-t.ready
	if unix.Gettid() == t.tid {
		return fn()
	}
	done := make(chan error, 1)
	select {
	case t.reqs <- request{fn: fn, done: done}:
		return <-done
	case <-t.done:
		return ErrClosed
	}
}

// reapZombies collects the death reports of traced zombie leaders that are
// ready, so their parents can reap them. The rest are collected later, or by
// the kernel when the tracer thread ends.
func (t *Tracer) reapZombies() {
	rest := t.zombies[:0]
	for _, tid := range t.zombies {
		var ws unix.WaitStatus
		if r, err := waitTid(tid, &ws, unix.WNOHANG); err == nil && r == 0 {
			rest = append(rest, tid)
		}
	}
	t.zombies = rest
}

// Attach stops every thread of process pid: PTRACE_SEIZE (with clone, exec
// and exit events) and PTRACE_INTERRUPT on each, then waits for each stop and
// re-reads /proc/PID/task until no new thread shows up. Threads that exit
// meanwhile are dropped; a zombie group leader is left alone. On any error
// everything attached so far is detached again.
func (t *Tracer) Attach(pid int) (*Process, error) {
	var p *Process
	err := t.run(func() error {
		if len(t.zombies) > 0 {
			t.reapZombies()
		}
		var err error
		p, err = t.attach(pid)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// AttachThread stops one thread of process pid (one other than the group leader
// when there is one) and leaves the others running: enough to run injected code
// that needs no stopped process, such as mapping memory no code uses yet. The
// returned Process holds only that thread.
func (t *Tracer) AttachThread(pid int) (*Process, error) {
	var p *Process
	err := t.run(func() error {
		if len(t.zombies) > 0 {
			t.reapZombies()
		}
		var err error
		p, err = t.attachThread(pid)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}
