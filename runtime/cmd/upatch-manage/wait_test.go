package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// slowProgram runs testdata/slow.c, whose only thread sits inside slow() until it
// reads a byte of stdin; next writes a byte and returns the line slow() printed.
type slowProgram struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startSlow(t *testing.T) (*slowProgram, string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "slow")
	run1(t, "gcc", "-O2", "-g", testdata("slow.c"), "-o", bin)
	obj := filepath.Join(dir, "fix_slow.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), testdata("fix_slow.c"), "-o", obj)
	p := &slowProgram{cmd: exec.Command(bin), lines: make(chan string, 64)}
	stdout, _ := p.cmd.StdoutPipe()
	p.stdin, _ = p.cmd.StdinPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stdin.Close(); p.cmd.Process.Kill(); p.cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	if l := p.line(t); l != "ready" {
		t.Fatalf("first line %q", l)
	}
	return p, obj
}

func (p *slowProgram) line(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatal("the program exited")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no output line")
	}
	return ""
}

func (p *slowProgram) next(t *testing.T) string {
	t.Helper()
	if _, err := p.stdin.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	return p.line(t)
}

// anonExec counts the anonymous r-x mappings of pid: patch regions, and the page
// of return code the engine maps while it waits.
func anonExec(t *testing.T, pid int) int {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[1] == "r-xp" && f[4] == "0" {
			n++
		}
	}
	return n
}

func itoa(i int) string { return strconv.Itoa(i) }

// waiting starts `upatch-manage patch` on p and returns once the tool is waiting
// for slow() to return (its page of return code is mapped in p).
func waiting(t *testing.T, bin, obj string, p *slowProgram, extra ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	before := anonExec(t, p.cmd.Process.Pid)
	args := append([]string{"patch", "--pid", itoa(p.cmd.Process.Pid), "--patch", obj, "--force", "--uuid", "44444444-4444-4444-8444-444444444444"}, extra...)
	cmd := exec.Command(bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; anonExec(t, p.cmd.Process.Pid) == before; i++ {
		if i > 1000 {
			t.Fatalf("the tool never started waiting (stderr %q)", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return cmd, &stderr
}

// patch waits for slow() to return and then applies; the output shows the old
// code for the call that was running, the new one after.
func TestWaitThenPatch(t *testing.T) {
	bin := tool(t)
	p, obj := startSlow(t)
	cmd, stderr := waiting(t, bin, obj, p, "--timeout", "20s")
	if l := p.next(t); l != "slow=1" {
		t.Fatalf("the running call printed %q", l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("patch: %v (%s)", err, stderr)
	}
	if l := p.next(t); l != "slow=2" {
		t.Fatalf("after the patch: %q, want slow=2", l)
	}
}

// SIGTERM during the wait: the tool exits at once, the process as it was.
func TestWaitEndsOnSIGTERM(t *testing.T) {
	bin := tool(t)
	p, obj := startSlow(t)
	before := anonExec(t, p.cmd.Process.Pid)
	cmd, stderr := waiting(t, bin, obj, p, "--timeout", "60s")
	t0 := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 128+15 {
		t.Fatalf("tool after SIGTERM: %v, want exit %d (%s)", err, 128+15, stderr)
	}
	if el := time.Since(t0); el > 5*time.Second {
		t.Errorf("the tool took %v to end its wait", el)
	}
	if !strings.Contains(stderr.String(), "canceled") || !strings.Contains(stderr.String(), "SIGTERM") && !strings.Contains(stderr.String(), "terminated") {
		t.Errorf("stderr %q does not say the wait was canceled by the signal", stderr)
	}
	if n := anonExec(t, p.cmd.Process.Pid); n != before {
		t.Errorf("%d anonymous r-x mappings after SIGTERM, want %d", n, before)
	}
	for i := 0; i < 2; i++ {
		if l := p.next(t); l != "slow=1" {
			t.Fatalf("after SIGTERM: %q, want the old slow=1", l)
		}
	}
}

// SIGKILL during the wait: nothing the tool left behind harms the process. The
// busy frame still returns through the return code (the page stays mapped,
// leaked), whose signal the untraced process ignores, and the old code runs on.
func TestWaitToolKilled(t *testing.T) {
	bin := tool(t)
	p, obj := startSlow(t)
	cmd, _ := waiting(t, bin, obj, p, "--timeout", "60s")
	cmd.Process.Kill()
	cmd.Wait()
	for i := 0; i < 3; i++ {
		if l := p.next(t); l != "slow=1" {
			t.Fatalf("after the tool was killed: %q, want the old slow=1", l)
		}
	}
	if err := p.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process died: %v", err)
	}
}
