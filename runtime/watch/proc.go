package watch

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// errGone says the process exited.
var errGone = errors.New("process exited")

// stopTimeout bounds the wait for a signalled process to enter group-stop. A process normally
// stops within microseconds (the signal is pending when the probe returns); one that takes
// longer (uninterruptible sleep) is reported anyway and the caller's ptrace attach copes.
const stopTimeout = time.Second

// procState returns the state letter of /proc/PID/stat.
func procState(pid int) (byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, errGone
	}
	// The command name may hold spaces and parentheses: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return b[i+2], nil
}

// waitStopped waits until pid is in a stop state. It returns errGone if the process died.
func waitStopped(pid int) error {
	deadline := time.Now().Add(stopTimeout)
	delay := 10 * time.Microsecond
	for {
		s, err := procState(pid)
		if err != nil {
			return err
		}
		switch s {
		case 'T', 't':
			return nil
		case 'Z', 'X':
			return errGone
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(delay)
		if delay < time.Millisecond {
			delay *= 2
		}
	}
}
