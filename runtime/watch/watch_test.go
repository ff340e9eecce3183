package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
	"golang.org/x/sys/unix"
)

// TestExecutableStopsAtEntry covers the three kinds of executable: each process is stopped
// before main printed anything, reported once with the path given to Add, and completes
// normally after Resume.
func TestExecutableStopsAtEntry(t *testing.T) {
	needRoot(t)
	kinds := map[string]string{"pie": fix.pie, "no-pie": fix.noPIE, "static": fix.static}
	for name, path := range kinds {
		t.Run(name, func(t *testing.T) {
			testenv.Require(t, path != "", "no static libc installed (libc6-dev provides libc.a)")
			w := newEBPF(t)
			if err := w.Add(path); err != nil {
				t.Fatal(err)
			}
			p := start(t, path)
			ev := nextEvent(t, w)
			if ev.Pid != p.cmd.Process.Pid || ev.Path != path {
				t.Fatalf("event %+v, want pid %d path %s", ev, p.cmd.Process.Pid, path)
			}
			assertStopped(t, ev.Pid)
			if out := p.output(t); out != "" {
				t.Fatalf("process printed %q before it was reported", out)
			}
			if err := w.Resume(ev.Pid); err != nil {
				t.Fatal(err)
			}
			if out := p.finish(t); out != "main flag=0\ndone\n" {
				t.Fatalf("output %q", out)
			}
			noEvent(t, w, 100*time.Millisecond)
		})
	}
}

// TestLibraryStopsBeforeInit: a process linked against the watched library is stopped before
// the library's constructor and before main (for a library with DT_INIT and for one with only
// DT_INIT_ARRAY); a process that dlopens it is stopped inside dlopen, after its own main
// started and before the constructor.
func TestLibraryStopsBeforeInit(t *testing.T) {
	w := newEBPF(t)
	for _, c := range []struct{ lib, exe string }{{fix.lib, fix.uselib}, {fix.libIA, fix.uselibIA}} {
		if err := w.Add(c.lib); err != nil {
			t.Fatal(err)
		}
		p := start(t, c.exe)
		ev := nextEvent(t, w)
		if ev.Pid != p.cmd.Process.Pid || ev.Path != c.lib {
			t.Fatalf("event %+v, want pid %d path %s", ev, p.cmd.Process.Pid, c.lib)
		}
		assertStopped(t, ev.Pid)
		if out := p.output(t); out != "" {
			t.Fatalf("%s: printed %q before it was reported: not stopped before init and main", c.lib, out)
		}
		if err := w.Resume(ev.Pid); err != nil {
			t.Fatal(err)
		}
		if out := p.finish(t); out != "ctor\nmain answer=42\n" {
			t.Fatalf("%s: output %q", c.lib, out)
		}
	}

	var ev Event
	p := start(t, fix.dlopener, fix.lib)
	ev = nextEvent(t, w)
	if ev.Pid != p.cmd.Process.Pid {
		t.Fatalf("event %+v, want pid %d", ev, p.cmd.Process.Pid)
	}
	assertStopped(t, ev.Pid)
	if out := p.output(t); out != "before dlopen\n" {
		t.Fatalf("printed %q when reported, want only the line before dlopen", out)
	}
	if err := w.Resume(ev.Pid); err != nil {
		t.Fatal(err)
	}
	if out := p.finish(t); out != "before dlopen\nctor\nanswer=42\n" {
		t.Fatalf("output %q", out)
	}
	noEvent(t, w, 100*time.Millisecond)
}

// TestFiftyProcesses starts 50 processes at once: each is reported exactly once, stopped
// before main, and completes after Resume.
func TestFiftyProcesses(t *testing.T) {
	w := newEBPF(t)
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	const n = 50
	procs := make(map[int]*proc, n)
	for range n {
		p := start(t, fix.pie)
		procs[p.cmd.Process.Pid] = p
	}
	seen := make(map[int]bool, n)
	for range n {
		ev := nextEvent(t, w)
		p := procs[ev.Pid]
		switch {
		case p == nil:
			t.Errorf("event for unknown pid %d", ev.Pid)
			w.Resume(ev.Pid)
			continue
		case seen[ev.Pid]:
			t.Errorf("pid %d reported twice", ev.Pid)
		}
		seen[ev.Pid] = true
		assertStopped(t, ev.Pid)
		if out := p.output(t); out != "" {
			t.Errorf("pid %d printed %q before it was reported", ev.Pid, out)
		}
		if err := w.Resume(ev.Pid); err != nil {
			t.Error(err)
		}
	}
	for pid, p := range procs {
		if out := p.finish(t); out != "main flag=0\ndone\n" {
			t.Errorf("pid %d: output %q", pid, out)
		}
	}
	noEvent(t, w, 200*time.Millisecond)
	if m := w.Missed(); m != 0 {
		t.Errorf("%d processes missed", m)
	}
}

// TestKilledWhileStopped: a reported process killed before Resume makes Resume fail with
// ESRCH and does not disturb the next ones.
func TestKilledWhileStopped(t *testing.T) {
	w := newEBPF(t)
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	p := start(t, fix.pie)
	ev := nextEvent(t, w)
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err == nil {
		t.Fatal("killed process exited cleanly")
	}
	if err := w.Resume(ev.Pid); !errors.Is(err, unix.ESRCH) {
		t.Fatalf("Resume of a dead process: %v, want ESRCH", err)
	}
	// Killed before the watcher even reported it: nothing is reported for it.
	for range 3 {
		p := start(t, fix.pie)
		ev := nextEvent(t, w)
		if ev.Pid != p.cmd.Process.Pid {
			t.Fatalf("event %+v, want pid %d", ev, p.cmd.Process.Pid)
		}
		if err := w.Resume(ev.Pid); err != nil {
			t.Fatal(err)
		}
		if out := p.finish(t); out != "main flag=0\ndone\n" {
			t.Fatalf("output %q", out)
		}
	}
}

// TestOnlyThatFile: a copy of the watched executable (another inode) and other programs run
// unstopped; a hard link (same inode) is caught and reported under the watched path.
func TestOnlyThatFile(t *testing.T) {
	w := newEBPF(t)
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy")
	data, err := os.ReadFile(fix.pie)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{cp, fix.noPIE, "/bin/true"} {
		if out := start(t, path).finish(t); path != "/bin/true" && out != "main flag=0\ndone\n" {
			t.Errorf("%s: output %q", path, out)
		}
	}
	noEvent(t, w, 100*time.Millisecond)

	hl := filepath.Join(fix.dir, "hardlink")
	if err := os.Link(fix.pie, hl); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(hl)
	p := start(t, hl)
	ev := nextEvent(t, w)
	if ev.Pid != p.cmd.Process.Pid || ev.Path != fix.pie {
		t.Fatalf("event %+v, want pid %d path %s", ev, p.cmd.Process.Pid, fix.pie)
	}
	w.Resume(ev.Pid)
	p.finish(t)
	if err := w.Add(hl); !errors.Is(err, os.ErrExist) {
		t.Errorf("Add of a hard link of a watched file: %v, want ErrExist", err)
	}
}

// TestRemove: after Remove the file's processes run unstopped; the other watch stays.
func TestRemove(t *testing.T) {
	w := newEBPF(t)
	for _, p := range []string{fix.pie, fix.noPIE} {
		if err := w.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Add(fix.pie); err != nil {
		t.Fatalf("second Add of the same file: %v", err)
	}
	if err := w.Remove(fix.pie); err != nil {
		t.Fatal(err)
	}
	if err := w.Remove(fix.pie); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second Remove: %v, want ErrNotExist", err)
	}
	if out := start(t, fix.pie).finish(t); out != "main flag=0\ndone\n" {
		t.Errorf("output %q", out)
	}
	noEvent(t, w, 100*time.Millisecond)
	p := start(t, fix.noPIE)
	ev := nextEvent(t, w)
	if ev.Pid != p.cmd.Process.Pid {
		t.Fatalf("event %+v, want pid %d", ev, p.cmd.Process.Pid)
	}
	w.Resume(ev.Pid)
	p.finish(t)
}

// TestCloseResumesAndReleases: Close lets a reported, unresumed process continue, closes the
// channel, and a loop of New/Add/Remove/Close leaks no file descriptor (maps, programs, links and the
// ring buffer are all descriptors).
func TestCloseResumesAndReleases(t *testing.T) {
	needRoot(t)
	w, err := newWatcher(options{mode: ModeEBPF})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	p := start(t, fix.pie)
	nextEvent(t, w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if out := p.finish(t); out != "main flag=0\ndone\n" {
		t.Errorf("output %q", out)
	}
	if _, ok := <-w.Events(); ok {
		t.Error("events channel still open after Close")
	}
	if err := w.Add(fix.pie); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v", err)
	}
	if out := start(t, fix.pie).finish(t); out != "main flag=0\ndone\n" {
		t.Errorf("after Close: output %q", out)
	}

	before := countFDs(t)
	// Each detach costs about 100 ms in the kernel, hence only 8 rounds.
	const rounds = 8
	for range rounds {
		w, err := newWatcher(options{mode: ModeEBPF})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{fix.noPIE, fix.lib} {
			if err := w.Add(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Remove(fix.noPIE); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := countFDs(t); after != before {
		t.Errorf("%d file descriptors before %d rounds of New/Add/Remove/Close, %d after", before, rounds, after)
	}
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestProcConnectorFallback: the fallback stops and reports a process of the watched file
// (late: the victim waits in main for EOF on stdin so that the late stop still finds it
// alive), ignores other programs, and also resumes on Close.
func TestProcConnectorFallback(t *testing.T) {
	needRoot(t)
	t.Setenv(ModeEnv, ModeProcConnector)
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Mode() != ModeProcConnector || w.FallbackReason() == nil {
		t.Fatalf("mode %s, reason %v", w.Mode(), w.FallbackReason())
	}
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	start(t, fix.noPIE).finish(t)
	p := start(t, fix.pie, "hold")
	ev := nextEvent(t, w)
	if ev.Pid != p.cmd.Process.Pid || ev.Path != fix.pie {
		t.Fatalf("event %+v, want pid %d path %s", ev, p.cmd.Process.Pid, fix.pie)
	}
	assertStopped(t, ev.Pid)
	t.Logf("proc connector: output when stopped %q (may be non-empty: this mode races)", p.output(t))
	if err := w.Resume(ev.Pid); err != nil {
		t.Fatal(err)
	}
	p.release()
	if out := p.finish(t); out != "main flag=0\ndone\n" {
		t.Fatalf("output %q", out)
	}
	noEvent(t, w, 100*time.Millisecond)

	p = start(t, fix.pie, "hold")
	nextEvent(t, w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	p.release()
	if out := p.finish(t); out != "main flag=0\ndone\n" {
		t.Fatalf("after Close: output %q", out)
	}
}

// TestRingFullNeverStopsUnreported: while the caller does not read events and the ring
// buffer is full, further processes run unstopped and are counted as missed; none is left
// stopped without an event. Every reported process is then resumed and all complete.
func TestRingFullNeverStopsUnreported(t *testing.T) {
	needRoot(t)
	// One page: 4096 bytes hold 102 records of 40 bytes; with the 64 events the channel
	// buffers and one in hand, about 167 processes can be held.
	w, err := newWatcher(options{mode: ModeEBPF, ringSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	const n = 220
	procs := make([]*proc, n)
	for i := range procs {
		procs[i] = start(t, fix.pie)
	}
	// Wait until every process either stopped or finished, without reading events (a
	// hang guard: 220 process starts take a while on a loaded machine).
	deadline := time.Now().Add(2 * time.Minute)
	var stopped, exited int
	for {
		stopped, exited = 0, 0
		for _, p := range procs {
			switch st, err := procState(p.cmd.Process.Pid); {
			case err != nil || st == 'Z':
				exited++
			case st == 'T':
				stopped++
			}
		}
		if stopped+exited == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	missed := w.Missed()
	t.Logf("%d stopped, %d ran through, %d missed", stopped, exited, missed)
	if missed == 0 || exited == 0 {
		t.Fatalf("the ring did not overflow (%d stopped, %d exited, %d missed): test does not test", stopped, exited, missed)
	}
	if uint64(exited) != missed {
		t.Errorf("%d processes ran through but %d were counted missed", exited, missed)
	}
	for range stopped {
		ev := nextEvent(t, w)
		if err := w.Resume(ev.Pid); err != nil {
			t.Error(err)
		}
	}
	for _, p := range procs {
		if out := p.finish(t); out != "main flag=0\ndone\n" {
			t.Errorf("pid %d: output %q", p.cmd.Process.Pid, out)
		}
	}
	noEvent(t, w, 100*time.Millisecond)
}

// TestAdoptsOrphans: a process stopped by a watcher whose owner died before Resume (simulated
// by forgetting it before Close) is reported by the next watcher's Add; a process stopped by
// job control elsewhere is not.
func TestAdoptsOrphans(t *testing.T) {
	w := newEBPF(t)
	if err := w.Add(fix.pie); err != nil {
		t.Fatal(err)
	}
	p := start(t, fix.pie)
	ev := nextEvent(t, w)
	w.mu.Lock()
	unix.Close(w.pending[ev.Pid])
	delete(w.pending, ev.Pid) // as if the owner crashed: nobody will resume it
	w.mu.Unlock()
	w.Close()

	// A job-control stop in the middle of main, not at the entry point.
	held := start(t, fix.noPIE, "hold")
	if err := waitPrinted(held, "main flag=0\n"); err != nil {
		t.Fatal(err)
	}
	unix.Kill(held.cmd.Process.Pid, unix.SIGSTOP)
	if err := waitStopped(held.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}

	time.Sleep(50 * time.Millisecond)
	assertStopped(t, ev.Pid)
	w2 := newEBPF(t)
	for _, path := range []string{fix.pie, fix.noPIE} {
		if err := w2.Add(path); err != nil {
			t.Fatal(err)
		}
	}
	ev2 := nextEvent(t, w2)
	if ev2.Pid != ev.Pid || ev2.Path != fix.pie {
		t.Fatalf("event %+v, want the orphan %d", ev2, ev.Pid)
	}
	if err := w2.Resume(ev2.Pid); err != nil {
		t.Fatal(err)
	}
	if out := p.finish(t); out != "main flag=0\ndone\n" {
		t.Fatalf("output %q", out)
	}
	noEvent(t, w2, 100*time.Millisecond)
	unix.Kill(held.cmd.Process.Pid, unix.SIGCONT)
	held.release()
	held.finish(t)
}

func waitPrinted(p *proc, want string) error {
	for range 500 {
		if b, _ := os.ReadFile(p.out); string(b) == want {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	b, _ := os.ReadFile(p.out)
	return fmt.Errorf("pid %d printed %q, want %q", p.cmd.Process.Pid, b, want)
}
