package watch

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
)

// fixtures are the C programs of testdata/, compiled once per test binary.
var fix struct {
	dir      string
	pie      string // victim.c, default (PIE on Debian)
	noPIE    string // victim.c, -no-pie
	static   string // victim.c, -static ("" when no static libc is installed)
	lib      string // libvictim.so (has DT_INIT from crti.o)
	uselib   string // uselib.c linked against libvictim.so
	libIA    string // libvictim.c with -nostartfiles: DT_INIT_ARRAY only, symbolic relocation
	uselibIA string // uselib.c linked against libIA
	libRel   string // DT_INIT_ARRAY only, RELATIVE relocation (addend stored in place)
	libRELR  string // DT_INIT_ARRAY only, packed in DT_RELR ("" if ld lacks -z pack-relative-relocs)
	libBare  string // -nostartfiles, no constructor: no initializer at all
	dlopener string // dlopener.c
	buildErr error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "watch-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fix.dir = dir
	fix.buildErr = buildFixtures(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildFixtures(dir string) error {
	cc := func(args ...string) error {
		out, err := exec.Command("gcc", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("gcc %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	fix.pie = filepath.Join(dir, "victim-pie")
	fix.noPIE = filepath.Join(dir, "victim-nopie")
	fix.lib = filepath.Join(dir, "libvictim.so")
	fix.uselib = filepath.Join(dir, "uselib")
	fix.dlopener = filepath.Join(dir, "dlopener")
	fix.libIA = filepath.Join(dir, "libvictim-ia.so")
	fix.uselibIA = filepath.Join(dir, "uselib-ia")
	fix.libBare = filepath.Join(dir, "libbare.so")
	fix.libRel = filepath.Join(dir, "libvictim-rel.so")
	steps := [][]string{
		{"-O2", "-g", "-fPIE", "-pie", "-o", fix.pie, "testdata/victim.c"},
		{"-O2", "-g", "-fno-pie", "-no-pie", "-o", fix.noPIE, "testdata/victim.c"},
		{"-O2", "-g", "-shared", "-fPIC", "-o", fix.lib, "testdata/libvictim.c"},
		{"-O2", "-g", "-o", fix.uselib, "testdata/uselib.c", "-L" + dir, "-lvictim", "-Wl,-rpath," + dir},
		{"-O2", "-g", "-o", fix.dlopener, "testdata/dlopener.c", "-ldl"},
		{"-O2", "-g", "-shared", "-fPIC", "-nostartfiles", "-o", fix.libIA, "testdata/libvictim.c"},
		{"-O2", "-g", "-o", fix.uselibIA, "testdata/uselib.c", "-L" + dir, "-l:libvictim-ia.so", "-Wl,-rpath," + dir},
		{"-O2", "-g", "-shared", "-fPIC", "-nostartfiles", "-DNO_CTOR", "-o", fix.libBare, "testdata/libvictim.c"},
		{"-O2", "-g", "-shared", "-fPIC", "-nostartfiles", "-DSTATIC_CTOR", "-o", fix.libRel, "testdata/libvictim.c"},
	}
	for _, s := range steps {
		if err := cc(s...); err != nil {
			return err
		}
	}
	relr := filepath.Join(dir, "libvictim-relr.so")
	if cc("-O2", "-g", "-shared", "-fPIC", "-nostartfiles", "-DSTATIC_CTOR", "-Wl,-z,pack-relative-relocs", "-o", relr, "testdata/libvictim.c") == nil {
		fix.libRELR = relr
	}
	static := filepath.Join(dir, "victim-static")
	if cc("-O2", "-static", "-o", static, "testdata/victim.c") == nil {
		fix.static = static
	}
	return nil
}

// needRoot skips (fails in CI) where the test cannot work at all (eBPF, signals to other users' processes
// and the proc connector need root) and fails when the fixtures did not build.
func needRoot(t testing.TB) {
	t.Helper()
	testenv.NeedRoot(t, "uprobes and the proc connector are privileged")
	if fix.buildErr != nil {
		t.Fatal(fix.buildErr)
	}
}

// newEBPF returns an eBPF watcher; on this project's machines eBPF must work, so its absence
// fails the test rather than skipping it.
func newEBPF(t testing.TB) *Watcher {
	t.Helper()
	needRoot(t)
	w, err := newWatcher(options{mode: ModeEBPF})
	if err != nil {
		t.Fatalf("eBPF watcher: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// proc is a started fixture whose stdout goes to a file, so that the test can tell what the
// process printed while it was stopped.
type proc struct {
	cmd  *exec.Cmd
	out  string
	hold io.WriteCloser // stdin of a victim started with "hold"
}

// release lets a victim started with the "hold" argument finish main.
func (p *proc) release() {
	if p.hold != nil {
		p.hold.Close()
	}
}

func start(t testing.TB, path string, args ...string) *proc {
	t.Helper()
	f, err := os.CreateTemp(fix.dir, "out-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	p := &proc{cmd: cmd, out: f.Name()}
	if len(args) > 0 && args[0] == "hold" {
		if p.hold, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.release()
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		os.Remove(f.Name())
	})
	return p
}

func (p *proc) output(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(p.out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// finish waits for the process and returns its output.
func (p *proc) finish(t testing.TB) string {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("pid %d: %v (output %q)", p.cmd.Process.Pid, err, p.output(t))
		}
	case <-time.After(20 * time.Second):
		st, _ := procState(p.cmd.Process.Pid)
		t.Fatalf("pid %d did not finish (state %c, output %q)", p.cmd.Process.Pid, st, p.output(t))
	}
	return p.output(t)
}

func nextEvent(t testing.TB, w *Watcher) Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatal("events channel closed")
		}
		return ev
	case <-time.After(30 * time.Second): // a hang guard: an exec and its probe, slow under load
		t.Fatal("no event within 30s")
	}
	return Event{}
}

// noEvent checks that nothing is reported for a while; used after the processes that should
// not be caught have already run to completion, so the wait only catches stragglers.
func noEvent(t testing.TB, w *Watcher, d time.Duration) {
	t.Helper()
	select {
	case ev := <-w.Events():
		t.Errorf("unexpected event %+v", ev)
		w.Resume(ev.Pid)
	case <-time.After(d):
	}
}

func assertStopped(t testing.TB, pid int) {
	t.Helper()
	st, err := procState(pid)
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	if st != 'T' {
		t.Fatalf("pid %d in state %c, want T (group-stop)", pid, st)
	}
}
