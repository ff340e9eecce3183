// Package tests runs `make demo` (tests/demo.sh) as a test, so that the command the README
// leads with is proven on every CI run.
package tests

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
)

// demo is one run of tests/demo.sh with freshly built binaries and a private TMPDIR.
type demo struct {
	cmd    *exec.Cmd
	tmp    string // TMPDIR of the run: its scratch directory goes there
	bin    string
	mu     sync.Mutex
	out    bytes.Buffer
	seen   chan struct{} // closed when the output holds waitFor
	waitOn string
	done   chan struct{}
}

func (d *demo) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.out.Write(p)
	if d.waitOn != "" && strings.Contains(d.out.String(), d.waitOn) {
		d.waitOn = ""
		close(d.seen)
	}
	return len(p), nil
}

func (d *demo) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// startDemo builds the binaries the demo runs and starts it in a process group of its
// own (as a terminal would), telling when its output contains waitOn.
func startDemo(t *testing.T, waitOn string) *demo {
	t.Helper()
	testenv.NeedRoot(t, "the demo uses ptrace and a dnf installroot")
	for _, tool := range []string{"rpmbuild", "createrepo_c", "dnf", "dbus-daemon", "gcc", "/bin/busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is a demo dependency (tests/deps.sh): %v", tool, err)
		}
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	d := &demo{tmp: t.TempDir(), bin: t.TempDir(), seen: make(chan struct{}), waitOn: waitOn, done: make(chan struct{})}
	build := exec.Command("go", "build", "-o", d.bin+"/", "./helper/cmd/syscare", "./helper/cmd/syscare-helper",
		"./rpmbuild/cmd/syscare-build")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	d.cmd = exec.Command(filepath.Join(repo, "tests", "demo.sh"))
	d.cmd.Env = append(os.Environ(), "SYSCARE_BIN="+d.bin, "TMPDIR="+d.tmp, "DEMO_KEEP=")
	d.cmd.Stdout, d.cmd.Stderr = d, d
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	})
	return d
}

// wait waits for the demo to end and returns its exit status.
func (d *demo) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("the demo runs for more than 5 minutes:\n%s", d.output())
	}
	return d.cmd.ProcessState.ExitCode()
}

// assertTornDown checks that the run left no scratch directory and no process running
// from the scratch root (the server) or from the test's bin (the helper).
func (d *demo) assertTornDown(t *testing.T) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(d.tmp, "syscare-demo.*")); len(left) != 0 {
		t.Errorf("scratch directory left behind: %v", left)
	}
	var running []string
	// The demo stops them before it exits; 30 s only lets a loaded machine reap them.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		running = running[:0]
		exes, _ := filepath.Glob("/proc/[0-9]*/exe")
		for _, e := range exes {
			if p, err := os.Readlink(e); err == nil && (strings.HasPrefix(p, d.tmp) || strings.HasPrefix(p, d.bin)) {
				running = append(running, filepath.Dir(e)+" "+p)
			}
		}
		if len(running) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("processes left running: %v", running)
}

func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

// TestDemo runs the demo to the end: it must say `demo: OK`, exit 0, show each step and
// the server's reply change, and leave nothing behind.
func TestDemo(t *testing.T) {
	d := startDemo(t, "")
	start := time.Now()
	code := d.wait(t)
	out := d.output()
	t.Logf("demo took %v", time.Since(start).Round(time.Millisecond))
	if code != 0 || lastLine(out) != "demo: OK" {
		t.Fatalf("exit %d, last line %q, want 0 and \"demo: OK\":\n%s", code, lastLine(out), out)
	}
	// Each step in order, and the reply to "%p %p %p": the leak, the fix, the leak again.
	want := []string{
		"demo-server-debuginfo-1.0-1.x86_64.rpm", "demo-server-1.0-1.src.rpm",
		"demo-server-debuginfo is not installed and /usr/bin/demo-server is stripped",
		"-> demo-server 1.0 (request 2): hello, ", // the unpatched reply
		"patch-demo-server-1.0-1-HP001-1-1.x86_64.rpm",
		"published advisory DEMO-SA-2024-0001",
		"AVAILABLE", "ACTIVED",
		"hello, %p %p %p",
		"dnf hotpatch list", "ACTIVED",
		"dnf hotpatch remove", "NOT-APPLIED",
		"(request 5): hello, ",
	}
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q after the earlier steps:\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
	if strings.HasPrefix(rest, "%p") {
		t.Errorf("the reply after remove is still the fixed one:\n%s", out)
	}
	d.assertTornDown(t)
}

// TestDemoInterrupted sends Ctrl-C (SIGINT to the process group) while the hot patch is
// active: the demo must fail and still stop the server, the bus and the helper and remove
// its scratch directory.
func TestDemoInterrupted(t *testing.T) {
	d := startDemo(t, "is fixed")
	select {
	case <-d.seen:
	case <-d.done:
		t.Fatalf("the demo ended before the patch was active:\n%s", d.output())
	case <-time.After(5 * time.Minute):
		t.Fatalf("the patch is not active after 5 minutes:\n%s", d.output())
	}
	if err := syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code := d.wait(t)
	out := d.output()
	if code == 0 || strings.Contains(out, "demo: OK") {
		t.Fatalf("interrupted demo: exit %d, want a failure:\n%s", code, out)
	}
	d.assertTornDown(t)
}
