package health

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
)

func TestSplit(t *testing.T) {
	for line, want := range map[string][]string{
		`redis-cli ping`:                    {"redis-cli", "ping"},
		`  curl  -fs  http://x/health `:     {"curl", "-fs", "http://x/health"},
		`sh -c 'test "$(cat f)" = ok'`:      {"sh", "-c", `test "$(cat f)" = ok`},
		`echo "a \"b\" $HOME" c\ d`:         {"echo", `a "b" $HOME`, "c d"},
		`systemctl is-active nginx.service`: {"systemctl", "is-active", "nginx.service"},
	} {
		got, err := Split(line)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("Split(%q) = %q, %v; want %q", line, got, err, want)
		}
	}
	for _, bad := range []string{"", "   ", `echo 'x`, `echo "x`, `echo \`} {
		if got, err := Split(bad); err == nil {
			t.Errorf("Split(%q) = %q, want an error", bad, got)
		}
	}
}

func run(t *testing.T, line string, timeout time.Duration) Result {
	t.Helper()
	c, err := New(line, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return Run(context.Background(), &c)
}

func TestRun(t *testing.T) {
	if r := run(t, "true", 0); !r.OK {
		t.Fatalf("true: %+v", r)
	}
	r := run(t, `sh -c 'echo broken; echo more >&2; exit 3'`, 0)
	if r.OK || r.Reason != "exit status 3" || r.Output != "broken\nmore" {
		t.Fatalf("failing check: %+v", r)
	}
	// No shell unless asked for: the pipe is an argument of echo.
	if r := run(t, "echo a | false", 0); !r.OK || r.Output != "a | false" {
		t.Fatalf("echo with a pipe character: %+v", r)
	}
	// The helper's environment does not reach the check.
	t.Setenv("SYSCARE_SECRET", "x")
	if r := run(t, "env", 0); !r.OK || strings.Contains(r.Output, "SYSCARE_SECRET") || !strings.Contains(r.Output, "PATH="+SafePath) {
		t.Fatalf("env of a check: %+v", r)
	}
	if r := run(t, "no-such-check-command", 0); r.OK || !strings.Contains(r.Reason, "not found") {
		t.Fatalf("missing command: %+v", r)
	}
	r = run(t, `sh -c 'head -c 100000 /dev/zero | tr "\0" x'`, 0)
	if !r.OK || len(r.Output) > MaxOutput+64 || !strings.Contains(r.Output, "95904 more bytes not kept") {
		t.Fatalf("large output kept %d bytes: %q", len(r.Output), r.Output[len(r.Output)-40:])
	}
}

// A hung check, and the background child it started, are killed at the timeout.
func TestRunTimeout(t *testing.T) {
	start := time.Now()
	r := run(t, `sh -c 'sleep 60 & echo started; sleep 60'`, 300*time.Millisecond)
	if r.OK || !strings.Contains(r.Reason, "killed at its timeout of 300ms") || r.Output != "started" {
		t.Fatalf("hung check: %+v", r)
	}
	// The check sleeps 60 s: well under that shows it was killed, with room for a
	// loaded machine (a 3 s bound was ten times the timeout, no more).
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("hung check took %s to be killed", took)
	}
}

// A check asked for by an unprivileged caller runs as that caller.
func TestRunAsCaller(t *testing.T) {
	testenv.NeedRoot(t, "a check runs as another user")
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	c, _ := New("id -u", 0)
	c.Cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if r := Run(context.Background(), &c); !r.OK || r.Output != u.Uid {
		t.Fatalf("check as nobody: %+v", r)
	}
}

// A check's Pdeathsig belongs to the thread that forked it. Started from a goroutine
// that locked its thread and then returned (as the engine's tracer does), the check
// must still run to its end: it is forked on the spawner thread. The same start made
// directly from that thread shows the kernel behaviour this guards against.
func TestCheckOutlivesCallerThread(t *testing.T) {
	startFromEndingThread := func(start func(*exec.Cmd) error, seconds string) error {
		cmd := exec.Command("sleep", seconds)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		// The Go runtime never ends the main thread (it keeps it, wedged). A
		// goroutine that lands there keeps it busy until the test ends, and the next
		// try runs on another thread. This goroutine holds its own thread too, so
		// that the new one cannot simply take over the thread it waits on.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		hold := make(chan struct{})
		defer close(hold)
		for try := 0; ; try++ {
			started := make(chan error, 1)
			onMain := make(chan bool, 1)
			go func() {
				runtime.LockOSThread() // never unlocked: the thread ends when this returns
				if syscall.Gettid() == os.Getpid() {
					onMain <- true
					<-hold
					runtime.UnlockOSThread()
					return
				}
				onMain <- false
				started <- start(cmd)
			}()
			if <-onMain {
				if try > 100 {
					t.Fatal("every goroutine ran on the main thread")
				}
				continue
			}
			if err := <-started; err != nil {
				t.Fatal(err)
			}
			return cmd.Wait()
		}
	}
	// A long child, so that only its kill ends it early, however late the thread ends.
	err := startFromEndingThread((*exec.Cmd).Start, "60")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("a child forked from a thread that ended: %v, want killed by SIGKILL (else the guard below proves nothing here)", err)
	}
	if err := startFromEndingThread(startOnSpawner, "0.5"); err != nil {
		t.Fatalf("check started on the spawner: %v, want a normal exit", err)
	}
}
