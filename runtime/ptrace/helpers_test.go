package ptrace

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
)

var victimBin string

func TestMain(m *testing.M) {
	if pid, err := strconv.Atoi(os.Getenv("SYSCARE_PTRACE_INJECTOR")); err == nil {
		injectForever(pid)
	}
	dir, err := os.MkdirTemp("", "ptrace-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	victimBin = filepath.Join(dir, "victim")
	out, err := exec.Command("gcc", "-O2", "-Wall", "-pthread", "-o", victimBin, "testdata/victim.c").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build victim: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// victim is a running test program. The test process is its parent, so it
// must not wait for it while it is traced: Go's wait4 would take the ptrace
// stops. Cleanup kills and reaps it.
type victim struct {
	t     testing.TB
	cmd   *exec.Cmd
	pid   int
	lines chan string
	stdin io.WriteCloser
}

func startVictim(tb testing.TB, args ...string) *victim {
	tb.Helper()
	cmd := exec.Command(victimBin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	v := &victim{t: tb, cmd: cmd, pid: cmd.Process.Pid, lines: make(chan string, 4096), stdin: stdin}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case v.lines <- sc.Text():
			default: // nobody listening: drop
			}
		}
		close(v.lines)
	}()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if !strings.HasPrefix(args[0], "exec") {
		v.expect("ready", lineWait)
	}
	return v
}

// lineWait bounds a wait for a victim's next line, printed every few milliseconds
// by a working victim: only a hang reaches it, not a loaded CI machine.
const lineWait = 30 * time.Second

// expect waits for a line starting with prefix and returns it.
func (v *victim) expect(prefix string, timeout time.Duration) string {
	v.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-v.lines:
			if !ok {
				v.t.Fatalf("pid %d: output ended while waiting for %q", v.pid, prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			v.t.Fatalf("pid %d: no %q line within %v", v.pid, prefix, timeout)
		}
	}
}

// drain discards the output produced so far.
func (v *victim) drain() {
	for {
		select {
		case <-v.lines:
		default:
			return
		}
	}
}

// keepsRunning checks that the victim produces n fresh tick lines.
func (v *victim) keepsRunning(n int) {
	v.t.Helper()
	v.drain()
	for i := 0; i < n; i++ {
		v.expect("tick", lineWait)
	}
}

// notTraced checks that no thread of pid is traced or stopped any more.
func notTraced(tb testing.TB, pid int) {
	tb.Helper()
	tids, err := proc.Threads(pid)
	if err != nil {
		tb.Fatal(err)
	}
	for _, tid := range tids {
		tp, err := proc.TracerPid(tid)
		if err != nil {
			continue // exited meanwhile
		}
		if tp != 0 {
			tb.Errorf("thread %d still traced by %d", tid, tp)
		}
		if st, err := proc.ThreadState(pid, tid); err == nil && (st == 't' || st == 'T') {
			tb.Errorf("thread %d still stopped (%c)", tid, st)
		}
	}
}

// allStopped checks that every live thread of pid is in a tracing stop and
// listed by p.
func allStopped(tb testing.TB, p *Process) {
	tb.Helper()
	tids, err := proc.Threads(p.Pid)
	if err != nil {
		tb.Fatal(err)
	}
	ours := map[int]bool{}
	for _, tid := range p.Threads() {
		ours[tid] = true
	}
	for _, tid := range tids {
		st, err := proc.ThreadState(p.Pid, tid)
		if err != nil || st == 'Z' || st == 'X' {
			continue
		}
		if st != 't' {
			tb.Errorf("thread %d of pid %d is %c, not in a tracing stop", tid, p.Pid, st)
		}
		if !ours[tid] {
			tb.Errorf("thread %d stopped but not listed by Threads()", tid)
		}
	}
}

// within fails the test if fn does not return within d (a hang).
func within(tb testing.TB, d time.Duration, what string, fn func()) {
	tb.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		tb.Fatalf("%s: no return within %v", what, d)
	}
}

func inExecutable(maps []proc.Mapping, addr uint64) bool {
	for _, m := range maps {
		if addr >= m.Start && addr < m.End && m.Executable() {
			return true
		}
	}
	return false
}

var _ = unix.SIGKILL

// TestStubMatchesSource assembles testdata/stub_amd64.s and compares it with
// the bytes the package injects, and with the offsets it relies on.
func TestStubMatchesSource(t *testing.T) {
	dir := t.TempDir()
	obj, bin := filepath.Join(dir, "stub.o"), filepath.Join(dir, "stub.bin")
	if out, err := exec.Command("as", "testdata/stub_amd64.s", "-o", obj).CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command("objcopy", "-O", "binary", "-j", ".text", obj, bin).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, stubCode) {
		t.Fatalf("stubCode differs from testdata/stub_amd64.s assembled (%d vs %d bytes)", len(stubCode), len(b))
	}
	out, err := exec.Command("nm", obj).Output()
	if err != nil {
		t.Fatal(err)
	}
	syms := map[string]uint64{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 {
			v, _ := strconv.ParseUint(f[0], 16, 64)
			syms[f[2]] = v
		}
	}
	if syms["parked"] != stubParked || syms["stub_end"] != stubPathOff || syms["notified"] != stubNotified {
		t.Fatalf("offsets: parked %#x (want %#x), stub_end %#x (want %#x)", syms["parked"], stubParked, syms["stub_end"], stubPathOff)
	}
}

// injectForever is the child of TestTracerKilledWhileInjecting: it attaches
// to pid, injects system calls and function calls, detaches, and again, until
// it is killed.
func injectForever(pid int) {
	tr := NewTracer()
	for {
		_ = tr.Do(func() error {
			p, err := tr.Attach(pid)
			if err != nil {
				return err
			}
			defer p.Detach()
			for i := 0; i < 20; i++ {
				addr, err := p.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
				if err != nil {
					return err
				}
				if _, err := p.Syscall(unix.SYS_GETPID); err != nil {
					return err
				}
				if _, err := p.Syscall(unix.SYS_MUNMAP, addr, 4096); err != nil {
					return err
				}
			}
			return nil
		})
	}
}
