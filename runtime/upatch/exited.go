package upatch

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// Telling a process that exited from other failures.

// gone reports whether pid has exited: it no longer exists, or only zombie threads
// are left to reap. (A zombie group leader whose other threads run is alive.)
func gone(pid int) bool {
	tids, err := proc.Threads(pid)
	if err != nil {
		return proc.IsGone(err)
	}
	for _, tid := range tids {
		if st, err := proc.ThreadState(pid, tid); err == nil && st != 'Z' && st != 'X' {
			return false
		}
	}
	return true
}

// exitedOr returns ErrExited when pid has exited, else err. A process that has
// exited but is not reaped yet (a zombie) has no mappings and no executable, so the
// target looks missing; one still exiting has lost its mappings but is not a zombie
// yet: when dying says the error looks like that, it waits a moment for the end.
func exitedOr(pid int, dying bool, err error) error {
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		if gone(pid) {
			return fmt.Errorf("pid %d: %w", pid, ptrace.ErrExited)
		}
		if !dying || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exited(pid int, err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("pid %d: %w", pid, ptrace.ErrExited)
	}
	return err
}
