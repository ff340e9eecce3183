package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Defaults of a check.
const (
	DefaultTimeout = 10 * time.Second
	// MaxOutput bounds what is kept of a check's output (stdout and stderr together).
	MaxOutput = 4096
)

// SafePath is the only PATH a check sees and the one its command is looked up in: the
// helper's own environment (set by whoever started it) never reaches a check.
const SafePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Check is one health check command.
type Check struct {
	// Line is the command line as configured, for reports; Argv its arguments (Split).
	Line string
	Argv []string
	// Timeout kills the check and everything it started; DefaultTimeout when zero.
	Timeout time.Duration
	// Cred runs the check as another user (the bus caller who asked for it); nil runs
	// it as the helper (root), which only checks from root-owned configuration and
	// from root callers do.
	Cred *syscall.Credential
}

// New parses a command line into a Check.
func New(line string, timeout time.Duration) (Check, error) {
	argv, err := Split(line)
	if err != nil {
		return Check{}, err
	}
	return Check{Line: line, Argv: argv, Timeout: timeout}, nil
}

// Result is the outcome of one run of a check.
type Result struct {
	Check *Check
	OK    bool
	// Reason says why it failed: "exit status 1", "killed at its timeout of 10s", ...
	Reason string
	// Output is stdout and stderr together, cut at MaxOutput.
	Output string
	Took   time.Duration
}

// Run runs c once. A check passes when it exits 0 within its timeout; a hung check is
// killed (its whole process group) at the timeout and fails, and so does a check that
// cannot be started.
func Run(ctx context.Context, c *Check) Result {
	start := time.Now()
	res := Result{Check: c}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	bin, err := lookPath(c.Argv[0])
	if err != nil {
		res.Reason = err.Error()
		return res
	}
	var out boundedBuffer
	cmd := &exec.Cmd{Path: bin, Args: c.Argv, Dir: "/", Stdout: &out, Stderr: &out,
		Env: []string{"PATH=" + SafePath, "LANG=C", "LC_ALL=C", "HOME=/"},
		// Its own process group, so that the timeout kills what the check started too.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Credential: c.Cred, Pdeathsig: syscall.SIGKILL},
		// A grandchild that escaped the group may hold the output pipe open: stop
		// waiting for it shortly after the check itself ended.
		WaitDelay: time.Second}
	if err := startOnSpawner(cmd); err != nil {
		res.Reason = fmt.Sprintf("start: %v", err)
		return res
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err = <-done:
	case <-timer.C:
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err = fmt.Errorf("killed at its timeout of %s", timeout)
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		err = fmt.Errorf("stopped: %w", ctx.Err())
	}
	// The group may still hold processes the check left behind in the background.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	res.Took = time.Since(start)
	res.Output = out.String()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			res.Reason = ee.ProcessState.String()
		} else {
			res.Reason = err.Error()
		}
		return res
	}
	res.OK = true
	return res
}

// lookPath finds a command in SafePath (a name with a slash is taken as it is).
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		if st, err := os.Stat(name); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("command %s: not an executable file", name)
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(SafePath) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %s: not found in %s", name, SafePath)
}

// boundedBuffer keeps the first MaxOutput bytes written to it and counts the rest.
type boundedBuffer struct {
	b       bytes.Buffer
	dropped int
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	room := max(MaxOutput-w.b.Len(), 0)
	if room < len(p) {
		w.dropped += len(p) - room
		p = p[:room]
	}
	w.b.Write(p)
	return n, nil // what is not kept is still consumed: the check must not block on it
}

func (w *boundedBuffer) String() string {
	s := strings.TrimRight(w.b.String(), "\n")
	if w.dropped > 0 {
		s += fmt.Sprintf("\n[%d more bytes not kept]", w.dropped)
	}
	return s
}
