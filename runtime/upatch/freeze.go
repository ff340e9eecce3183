package upatch

import (
	"errors"
	"fmt"
	"time"

	"github.com/syscare/syscare/runtime/ptrace"
)

// The freeze: every thread stopped around an operation, retried while busy.

// testHookStopped, when set by a test, runs right after the process was stopped.
var testHookStopped func(pid int)

// frozen stops every thread of pid, runs op and resumes the process. When op
// reports a busy function and o.Timeout allows, it waits in the same attach for
// the busy threads to return (wait.go) and runs op again. Otherwise, while op
// reports a busy function, it lets the process go, waits (doubling the wait each
// time) and tries again, up to o.retries() times. before runs ahead of each try,
// with the process running.
func (e *Engine) frozen(t *ptrace.Tracer, pid int, o Options, before func(try int) error, op func(*ptrace.Process) error) (Stats, error) {
	var st Stats
	delay := o.delay()
	deadline := time.Now().Add(o.Timeout)
	for try := 1; ; try++ {
		st.Tries = try
		if err := before(try); err != nil {
			return st, err
		}
		var busy error
		err := t.Do(func() error {
			start := time.Now()
			pr, err := t.Attach(pid)
			if err != nil {
				return fmt.Errorf("stop pid %d: %w", pid, err)
			}
			if testHookStopped != nil {
				testHookStopped(pid)
			}
			stopped := time.Now()
			err = op(pr)
			var waited time.Duration
			if o.Timeout > 0 && errors.Is(err, ErrBusy) {
				waited, err = waitOut(pr, err, deadline, o.Timeout, o.Cancel, op)
			}
			done := time.Now()
			if derr := pr.Detach(); derr != nil && err == nil {
				err = fmt.Errorf("resume pid %d: %w", pid, derr)
			}
			st.Freeze += time.Since(start) - waited
			st.Stop += stopped.Sub(start)
			st.Work += done.Sub(stopped) - waited
			st.Wait += waited
			if errors.Is(err, ErrBusy) && waited == 0 {
				busy, err = err, nil
			}
			return err
		})
		if err != nil {
			return st, err
		}
		if busy == nil {
			return st, nil
		}
		if try >= o.retries() {
			return st, fmt.Errorf("%w after %d tries", busy, try)
		}
		select {
		case <-o.Cancel:
			return st, fmt.Errorf("%w (%w before try %d)", busy, ptrace.ErrCanceled, try+1)
		case <-time.After(delay):
		}
		delay *= 2
	}
}
