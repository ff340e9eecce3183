package upatch

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// startSlow starts testdata/slow.c, whose only thread sits inside slow() until it
// reads a byte of stdin, and builds the patch replacing slow().
func startSlow(t *testing.T) (*victim, *Engine, Options, *patchobj.Object) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "slow")
	gcc(t, "-O2", "-g", testdata("slow.c"), "-o", bin)
	v := start(t, bin, nil)
	_, obj := buildPatch(t, "fix_slow.c", bin, "")
	waitBlockedInRead(t, v.pid(), stdin) // in read() inside slow()
	return v, NewEngine("/"), opts(uuid1), obj
}

func isSlow(l string) bool { return strings.HasPrefix(l, "slow=") }

func stdin(fd int) bool { return fd == 0 }

// anonExec counts the anonymous r-x mappings of pid (patch regions, return code).
func anonExec(t *testing.T, pid int) int { return patchMappings(t, pid) }

// A thread blocked inside the function being replaced: the patch waits for it to
// return, then applies in the same attach; the next call runs the new code.
func TestWaitForBusyFunction(t *testing.T) {
	v, e, o, obj := startSlow(t)
	o.Timeout = 10 * time.Second
	before := anonExec(t, v.pid())
	done := make(chan error, 1)
	var st Stats
	go func() {
		var err error
		st, err = e.PatchStats(v.pid(), obj, o)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("patch returned while slow() was still busy: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The byte must come while the engine holds the process: sent before the attach,
	// it would end this call and the next would be busy again.
	waitTraced(t, v.pid())
	if line := v.send(t, "x", isSlow); line != "slow=1" {
		t.Fatalf("the call that was running when the patch came printed %q, want the old slow=1", line)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("patch after slow() returned: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("patch did not finish after slow() returned")
	}
	// How long it waited depends on how long the attach took (a loaded machine): that
	// it waited in its first try is the point.
	if st.Wait <= 0 || st.Tries != 1 {
		t.Errorf("stats %+v: want one try that waited", st)
	}
	if line := v.send(t, "x", isSlow); line != "slow=2" {
		t.Fatalf("after the patch: %q, want slow=2", line)
	}
	// The patch region stays; the return code is gone.
	if n := anonExec(t, v.pid()); n != before+1 {
		t.Errorf("%d anonymous r-x mappings after the patch, want %d (the patch region only)", n, before+1)
	}
}

// The bound: a thread that never leaves gives a clear error after the timeout, and
// the process is exactly as before (old code, no patch, no return code mapped).
func TestWaitBoundReached(t *testing.T) {
	v, e, o, obj := startSlow(t)
	o.Timeout = 300 * time.Millisecond
	before := anonExec(t, v.pid())
	mem := stackAndText(t, v.pid())
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("patch while slow() never returns: %v, want ErrBusy", err)
	}
	for _, want := range []string{"thread", `"slow"`, "still in function", "after 300ms"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %s", err, want)
		}
	}
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("patch left after the bound: %+v", applied)
	}
	if n := anonExec(t, v.pid()); n != before {
		t.Errorf("%d anonymous r-x mappings after the bound, want %d", n, before)
	}
	if after := stackAndText(t, v.pid()); !bytes.Equal(after, mem) {
		t.Errorf("the stack or the code of slow() changed")
	}
	for i := 0; i < 2; i++ {
		if line := v.send(t, "x", isSlow); line != "slow=1" {
			t.Fatalf("after the bound: %q, want the old slow=1", line)
		}
	}
}

// Cancel during the wait: the wait ends at once, the process is as before.
func TestWaitCanceled(t *testing.T) {
	v, e, o, obj := startSlow(t)
	o.Timeout = 30 * time.Second
	cancel := make(chan struct{})
	o.Cancel = cancel
	before := anonExec(t, v.pid())
	time.AfterFunc(200*time.Millisecond, func() { close(cancel) })
	t0 := time.Now()
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ptrace.ErrCanceled) || !strings.Contains(err.Error(), `"slow"`) {
		t.Fatalf("canceled wait: %v, want ErrCanceled naming slow", err)
	}
	if el := time.Since(t0); el > 5*time.Second {
		t.Errorf("cancel took %v", el)
	}
	if applied, _ := e.Info(v.pid()); len(applied) != 0 || anonExec(t, v.pid()) != before {
		t.Fatalf("canceled patch left %+v, %d mappings (had %d)", applied, anonExec(t, v.pid()), before)
	}
	if line := v.send(t, "x", isSlow); line != "slow=1" {
		t.Fatalf("after cancel: %q, want slow=1", line)
	}
}

// Several threads: one parked in park() while workers run; the patch waits for
// park() to return (the parker thread then ends) and applies.
func TestWaitWithOtherThreadsRunning(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil, "4")
	_, obj := buildPatch(t, "fix_park.c", bin, "")
	v.stdin.Write([]byte("park\n"))
	waitBlockedInRead(t, v.pid(), notStdin) // the parker, in park()
	e := NewEngine("/")
	o := opts(uuid1)
	o.Timeout = 30 * time.Second
	var st Stats
	done := make(chan error, 1)
	go func() {
		var err error
		st, err = e.PatchStats(v.pid(), obj, o)
		done <- err
	}()
	// Released while the engine holds the process (a fixed delay could end before a
	// loaded machine's attach, and then nothing is busy).
	waitTraced(t, v.pid())
	time.Sleep(300 * time.Millisecond)
	v.stdin.Write([]byte("release\n"))
	if err := <-done; err != nil {
		t.Fatalf("patch while park() is busy, released later: %v", err)
	}
	if st.Wait <= 0 || st.Tries != 1 {
		t.Errorf("stats %+v: want one try that waited for the release", st)
	}
	if applied, _ := e.Info(v.pid()); len(applied) != 1 {
		t.Fatalf("info after the wait: %+v", applied)
	}
	v.alive(t)
	// The parker ends once park() returned; a loaded machine may run its exit late.
	n := threadCount(t, v.pid())
	for end := time.Now().Add(settleBound); n != 6 && time.Now().Before(end); n = threadCount(t, v.pid()) {
		time.Sleep(5 * time.Millisecond)
	}
	if n != 6 {
		t.Errorf("%d threads, want 6 (main, stdin reader, 4 workers)", n)
	}
}

// stackAndText reads the live stack of pid's only thread (blocked in a system call)
// and its executable's code, to compare before and after a wait.
func stackAndText(t *testing.T, pid int) []byte {
	t.Helper()
	var f []string
	for i := 0; len(f) < 9; i++ {
		sc, err := os.ReadFile("/proc/" + itoa(pid) + "/syscall")
		if err != nil {
			t.Fatal(err)
		}
		if f = strings.Fields(string(sc)); len(f) < 9 && i > 200 {
			t.Fatalf("/proc/%d/syscall: %q (not blocked in a system call)", pid, sc)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sp, err := strconv.ParseUint(strings.TrimPrefix(f[7], "0x"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := proc.Maps(pid)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for _, m := range maps {
		lo := m.Start
		switch {
		case sp >= m.Start && sp < m.End:
			lo = sp
		case m.Executable() && strings.HasSuffix(m.Path, "/slow"):
		default:
			continue
		}
		b := make([]byte, m.End-lo)
		if err := (ptrace.Remote{Pid: pid}).ReadMem(lo, b); err != nil {
			t.Fatal(err)
		}
		buf = append(buf, b...)
	}
	return buf
}

// Unpatch while the thread is inside the patch (the new slow() blocked in read):
// the patch's code has no call-frame information, so the frame it returns to is
// found by its call site; the engine waits for it to return, then unpatches.
func TestUnpatchWaitsForThreadInPatch(t *testing.T) {
	v, e, o, obj := startSlow(t)
	if err := e.Patch(v.pid(), obj, o); err == nil {
		t.Fatal("patch succeeded while slow() was busy without waiting")
	}
	o.Timeout = 10 * time.Second
	done := make(chan error, 1)
	go func() { done <- e.Patch(v.pid(), obj, o) }()
	waitTraced(t, v.pid()) // the byte ends the busy call only once the engine waits
	if line := v.send(t, "x", isSlow); line != "slow=1" {
		t.Fatalf("%q, want slow=1", line)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitBlockedInRead(t, v.pid(), stdin) // back in read(), now inside slow_v2
	o.Timeout = 0
	err := e.Unpatch(v.pid(), uuid1, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), `"slow"`) {
		t.Fatalf("unpatch while the new slow() runs, without waiting: %v, want busy", err)
	}
	o.Timeout = 10 * time.Second
	go func() { done <- e.Unpatch(v.pid(), uuid1, o) }()
	select {
	case err := <-done:
		t.Fatalf("unpatch returned while the patch was busy: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	waitTraced(t, v.pid())
	if line := v.send(t, "x", isSlow); line != "slow=2" {
		t.Fatalf("the running call printed %q, want the patched slow=2", line)
	}
	if err := <-done; err != nil {
		t.Fatalf("unpatch after the new slow() returned: %v", err)
	}
	if line := v.send(t, "x", isSlow); line != "slow=1" {
		t.Fatalf("after unpatch: %q, want slow=1", line)
	}
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("info after unpatch: %+v", applied)
	}
}

// A process stopped by job control is not let run to wait for a busy thread: the
// patch is refused at once, and the process stays stopped, then goes on unchanged.
func TestNoWaitInStoppedProcess(t *testing.T) {
	v, e, o, obj := startSlow(t)
	o.Timeout = 10 * time.Second
	if err := v.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, v.pid(), 'T')
	t0 := time.Now()
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "job control") {
		t.Fatalf("patch of a stopped process with a busy thread: %v, want busy, stopped by job control", err)
	}
	if el := time.Since(t0); el > 5*time.Second {
		t.Errorf("took %v", el)
	}
	time.Sleep(100 * time.Millisecond)
	if st, _ := proc.ThreadState(v.pid(), v.pid()); st != 'T' {
		t.Errorf("state %c after the refusal, want still stopped (T)", st)
	}
	v.cmd.Process.Signal(syscall.SIGCONT)
	if line := v.send(t, "x", isSlow); line != "slow=1" {
		t.Fatalf("after SIGCONT: %q, want slow=1", line)
	}
}

// SIGSTOP while the engine waits: the wait ends, the process stays stopped.
func TestWaitEndsOnJobStop(t *testing.T) {
	v, e, o, obj := startSlow(t)
	o.Timeout = 20 * time.Second
	time.AfterFunc(300*time.Millisecond, func() { v.cmd.Process.Signal(syscall.SIGSTOP) })
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "job control") {
		t.Fatalf("SIGSTOP during the wait: %v, want busy, stopped by job control", err)
	}
	waitState(t, v.pid(), 'T')
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("patch left: %+v", applied)
	}
	v.cmd.Process.Signal(syscall.SIGCONT)
	if line := v.send(t, "x", isSlow); line != "slow=1" {
		t.Fatalf("after SIGCONT: %q, want slow=1", line)
	}
}

// waitState waits until pid's leader is in state st.
func waitState(t *testing.T, pid int, st byte) {
	t.Helper()
	for i := 0; ; i++ {
		if s, err := proc.ThreadState(pid, pid); err == nil && s == st {
			return
		}
		if i > 500 {
			s, _ := proc.ThreadState(pid, pid)
			t.Fatalf("pid %d: state %c, want %c", pid, s, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
