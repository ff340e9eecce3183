package kpatch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testRelease = "6.1.0-test-amd64"

// buildModule compiles an ELF object whose .modinfo holds the given key=value pairs,
// as modpost would write them; the kernel never sees it, only ReadModInfo and the fake.
func buildModule(t *testing.T, file string, info ...string) string {
	t.Helper()
	dir := t.TempDir()
	var src strings.Builder
	for i, kv := range info {
		fmt.Fprintf(&src, "static const char mi%d[] __attribute__((section(\".modinfo\"), used, aligned(1))) = %q;\n", i, kv)
	}
	src.WriteString("int placeholder(void) { return 0; }\n")
	c := filepath.Join(dir, "mod.c")
	if err := os.WriteFile(c, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, file)
	if b, err := exec.Command("gcc", "-c", "-o", out, c).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

func livepatchModule(t *testing.T, name string) string {
	return buildModule(t, name+".ko", "name="+name, "vermagic="+testRelease+" SMP preempt mod_unload modversions ", "livepatch=Y", "license=GPL")
}

// fakeKernel plays the kernel on a temporary sysfs tree: loading a module creates
// /sys/module/<name> and (unless noPatch) an enabled livepatch directory.
type fakeKernel struct {
	root       string
	mu         sync.Mutex
	calls      []string
	noPatch    bool
	transition string // initial transition value after load ("0" when empty)
	busy       int    // DeleteModule answers EAGAIN this many times
}

func (k *fakeKernel) record(s string) {
	k.mu.Lock()
	k.calls = append(k.calls, s)
	k.mu.Unlock()
}

func (k *fakeKernel) Calls() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return strings.Join(k.calls, " ")
}

func (k *fakeKernel) FinitModule(f *os.File, params string) error {
	mi, err := ReadModInfo(f.Name())
	if err != nil {
		return unix.ENOEXEC
	}
	k.record("load:" + mi.Name)
	mod := filepath.Join(k.root, "sys/module", mi.Name)
	if _, err := os.Stat(mod); err == nil {
		return unix.EEXIST
	}
	writeTree(mod, map[string]string{"initstate": "live\n"})
	if mi.BuildID != nil {
		note := binary.LittleEndian.AppendUint32(nil, 4)
		note = binary.LittleEndian.AppendUint32(note, uint32(len(mi.BuildID)))
		note = binary.LittleEndian.AppendUint32(note, 3)
		note = append(append(note, "GNU\x00"...), mi.BuildID...)
		writeTree(filepath.Join(mod, "notes"), map[string]string{".note.gnu.build-id": string(note)})
	}
	if !k.noPatch {
		tr := k.transition
		if tr == "" {
			tr = "0"
		}
		writeTree(filepath.Join(k.root, "sys/kernel/livepatch", mi.Name), map[string]string{"enabled": "1\n", "transition": tr + "\n"})
	}
	return nil
}

func (k *fakeKernel) DeleteModule(name string) error {
	k.record("delete:" + name)
	if k.busy > 0 {
		k.busy--
		return unix.EAGAIN
	}
	mod := filepath.Join(k.root, "sys/module", name)
	if _, err := os.Stat(mod); err != nil {
		return unix.ENOENT
	}
	klp := filepath.Join(k.root, "sys/kernel/livepatch", name)
	if b, err := os.ReadFile(filepath.Join(klp, "enabled")); err == nil && strings.TrimSpace(string(b)) == "1" {
		return unix.EBUSY // an enabled patch holds its module
	}
	os.RemoveAll(klp)
	return os.RemoveAll(mod)
}

func writeTree(dir string, files map[string]string) {
	os.MkdirAll(dir, 0o755)
	for n, v := range files {
		os.WriteFile(filepath.Join(dir, n), []byte(v), 0o644)
	}
}

func newTestPatcher(t *testing.T) (*Patcher, *fakeKernel) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sys/kernel/livepatch"), 0o755)
	os.MkdirAll(filepath.Join(root, "proc"), 0o755)
	k := &fakeKernel{root: root}
	// A transition the fake kernel ends takes a few polls; the timeout is long enough for
	// a loaded machine. Tests of a stalled transition shorten it (stallTimeout).
	return &Patcher{Root: root, Sys: k, Release: testRelease, Timeout: 5 * time.Second, Poll: time.Millisecond}, k
}

func mustState(t *testing.T, p *Patcher, name string, want State) {
	t.Helper()
	st, err := p.Status(name)
	if err != nil {
		t.Fatalf("status %s: %v", name, err)
	}
	if st.State != want {
		t.Fatalf("status %s = %v, want %v", name, st.State, want)
	}
}

func TestParseModInfo(t *testing.T) {
	data := []byte("license=GPL\x00name=lp-fix\x00vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \x00livepatch=Y\x00\x00\x00depends=\x00license=other\x00garbage\x00")
	m, err := ParseModInfo(data, "file")
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "lp_fix" || m.Release() != "6.1.0-56-amd64" || !m.Livepatch || m.Fields["license"] != "GPL" || m.Fields["depends"] != "" {
		t.Fatalf("got %+v", m)
	}
	m, err = ParseModInfo([]byte("vermagic=5.10.0 SMP\x00"), "from-file")
	if err != nil || m.Name != "from_file" || m.Livepatch {
		t.Fatalf("fallback name: %+v %v", m, err)
	}
	for _, bad := range []string{"name=../x\x00vermagic=1\x00", "name=ok\x00", "name=\x00vermagic=1\x00", ""} {
		if _, err := ParseModInfo([]byte(bad), ""); err == nil {
			t.Errorf("ParseModInfo(%q) accepted", bad)
		}
	}
}

func FuzzParseModInfo(f *testing.F) {
	f.Add([]byte("name=a\x00vermagic=6.1 SMP\x00livepatch=Y\x00"))
	f.Add([]byte("\x00\x00="))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseModInfo(b, "x")
		if err == nil && (!moduleNameRe.MatchString(m.Name) || m.Release() == "") {
			t.Fatalf("accepted %+v", m)
		}
	})
}

func TestReadModInfoAndCheck(t *testing.T) {
	p, _ := newTestPatcher(t)
	mod := livepatchModule(t, "lp_a")
	mi, err := p.Check(mod)
	if err != nil {
		t.Fatal(err)
	}
	if mi.Name != "lp_a" || mi.Release() != testRelease {
		t.Fatalf("modinfo %+v", mi)
	}

	other := buildModule(t, "lp_b.ko", "name=lp_b", "vermagic=6.1.0-99-amd64 SMP ", "livepatch=Y")
	if _, err := p.Check(other); !errors.Is(err, ErrReleaseMismatch) || !strings.Contains(err.Error(), "6.1.0-99-amd64") {
		t.Fatalf("other release: %v", err)
	}
	plain := buildModule(t, "plain.ko", "name=plain", "vermagic="+testRelease+" SMP ")
	if _, err := p.Check(plain); !errors.Is(err, ErrNotLivepatch) {
		t.Fatalf("plain module: %v", err)
	}
	noinfo := buildModule(t, "noinfo.ko")
	if _, err := ReadModInfo(noinfo); err == nil || !strings.Contains(err.Error(), ".modinfo") {
		t.Fatalf("no .modinfo: %v", err)
	}
	junk := filepath.Join(t.TempDir(), "junk.ko")
	os.WriteFile(junk, []byte("\x7fELF\x02\x01\x01junkjunkjunk"), 0o644)
	if _, err := ReadModInfo(junk); err == nil {
		t.Fatal("junk accepted")
	}

	// Without Release the running kernel's uname decides.
	p.Release = ""
	if _, err := p.Check(mod); !errors.Is(err, ErrReleaseMismatch) {
		t.Fatalf("uname check: %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	p, k := newTestPatcher(t)
	mod := livepatchModule(t, "lp_a")

	mustState(t, p, "lp_a", Unloaded)
	if _, err := p.Load(ctx, mod); err != nil {
		t.Fatal(err)
	}
	mustState(t, p, "lp_a", Enabled)
	// Loading again is a no-op.
	if _, err := p.Load(ctx, mod); err != nil {
		t.Fatal(err)
	}
	if got := k.Calls(); got != "load:lp_a" {
		t.Fatalf("calls after two loads: %q", got)
	}
	// A new Patcher (a restarted helper) reads the same state.
	p2 := &Patcher{Root: p.Root, Sys: k, Release: testRelease}
	list, err := p2.List()
	if err != nil || len(list) != 1 || list[0] != (Status{"lp_a", Enabled}) {
		t.Fatalf("list: %v %v", list, err)
	}

	if err := p.Disable(ctx, "lp_a"); err != nil {
		t.Fatal(err)
	}
	mustState(t, p, "lp_a", Loaded)
	if err := p.Disable(ctx, "lp_a"); err != nil {
		t.Fatalf("disable twice: %v", err)
	}
	// The kernel freed the patch (its directory is gone): enabling needs a reload.
	os.RemoveAll(filepath.Join(p.Root, "sys/kernel/livepatch/lp_a"))
	mustState(t, p, "lp_a", Loaded)
	if err := p.Enable(ctx, "lp_a"); !errors.Is(err, ErrNeedsReload) {
		t.Fatalf("enable freed patch: %v", err)
	}
	if _, err := p.Load(ctx, mod); err != nil {
		t.Fatal(err)
	}
	mustState(t, p, "lp_a", Enabled)
	if got := k.Calls(); got != "load:lp_a delete:lp_a load:lp_a" {
		t.Fatalf("calls after reload: %q", got)
	}

	if err := p.Unload(ctx, "lp_a"); err != nil {
		t.Fatal(err)
	}
	mustState(t, p, "lp_a", Unloaded)
	if err := p.Unload(ctx, "lp_a"); err != nil {
		t.Fatalf("unload twice: %v", err)
	}
	if err := p.Disable(ctx, "lp_a"); !errors.Is(err, ErrNotLoaded) {
		t.Fatalf("disable unloaded: %v", err)
	}
	if _, err := p.Status("../etc"); err == nil {
		t.Fatal("status accepted a path")
	}
}

func TestEnableReversesDisable(t *testing.T) {
	ctx := context.Background()
	p, _ := newTestPatcher(t)
	// A disable in progress: enabled=0, transition=1. Enable writes 1; the fake
	// kernel's transition then ends.
	dir := filepath.Join(p.Root, "sys/kernel/livepatch/lp_a")
	writeTree(dir, map[string]string{"enabled": "0\n", "transition": "1\n"})
	writeTree(filepath.Join(p.Root, "sys/module/lp_a"), map[string]string{"initstate": "live\n"})
	mustState(t, p, "lp_a", Disabling)
	stop := simulateTransitions(p.Root, "lp_a", "0")
	defer stop()
	if err := p.Enable(ctx, "lp_a"); err != nil {
		t.Fatal(err)
	}
	mustState(t, p, "lp_a", Enabled)
}

// simulateTransitions ends a transition whenever enabled is written to its reverse
// value, as the kernel does when the tasks are all switchable.
func simulateTransitions(root, name, from string) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	dir := filepath.Join(root, "sys/kernel/livepatch", name)
	enabled := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "enabled"))
		return strings.TrimSpace(string(b))
	}
	// Read before returning: the caller's write may come before the goroutine's first look.
	seen := enabled() == from
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			// React only to a real reversal: the file may not exist yet, or be read
			// while the fake kernel rewrites it (empty), before it first shows from.
			v := enabled()
			if v == "" {
				continue
			}
			if v == from {
				seen = true
				continue
			}
			if seen {
				os.WriteFile(filepath.Join(dir, "transition"), []byte("0\n"), 0o644)
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// stallTimeout is the transition timeout of tests in which the transition never ends.
const stallTimeout = 200 * time.Millisecond

func TestLoadTimeoutNamesStalledTasksAndReverts(t *testing.T) {
	ctx := context.Background()
	p, k := newTestPatcher(t)
	p.Timeout = stallTimeout
	// The reversal does end (simulateTransitions): its bound only guards against a hang.
	// Left at stallTimeout, a loaded machine that runs the fake kernel's goroutine late
	// would make it look stalled too.
	p.RevertTimeout = 30 * time.Second
	k.transition = "1" // the enable never finishes by itself
	mod := livepatchModule(t, "lp_stall")
	proc := filepath.Join(p.Root, "proc")
	writeTree(filepath.Join(proc, "100/task/100"), map[string]string{"patch_state": "0\n", "comm": "pauser\n"})
	writeTree(filepath.Join(proc, "100/task/101"), map[string]string{"patch_state": "1\n", "comm": "pauser\n"})
	writeTree(filepath.Join(proc, "100/task/102"), map[string]string{"patch_state": "0\n", "comm": "worker\n"})
	writeTree(filepath.Join(proc, "200/task/200"), map[string]string{"patch_state": "-1\n", "comm": "idle\n"})
	writeTree(filepath.Join(proc, "self"), nil)

	// The fake kernel ends the transition as soon as it is reversed.
	stop := simulateTransitions(p.Root, "lp_stall", "1")
	_, err := p.Load(ctx, mod)
	stop()
	var te *TransitionError
	if !errors.As(err, &te) || !errors.Is(err, ErrTransitionTimeout) {
		t.Fatalf("load: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"lp_stall", "transition to enabled", "100 (pauser)", "100/102 (worker)", "reverted"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "101") || strings.Contains(msg, "idle") || strings.Contains(msg, "not reverted") {
		t.Errorf("error %q names a task that switched or no transition", msg)
	}
	if len(te.Tasks) != 2 || !te.Reverted || !te.Enable {
		t.Fatalf("transition error %+v", te)
	}
	// Reverted and dropped: nothing is left loaded.
	mustState(t, p, "lp_stall", Unloaded)
}

func TestDisableTimeoutNotReverted(t *testing.T) {
	ctx := context.Background()
	p, _ := newTestPatcher(t)
	p.Timeout = stallTimeout
	// An enable in progress that nobody finishes: the disable reverses it, stalls too,
	// and so does the reversal back.
	writeTree(filepath.Join(p.Root, "sys/kernel/livepatch/lp_a"), map[string]string{"enabled": "1\n", "transition": "1\n"})
	writeTree(filepath.Join(p.Root, "sys/module/lp_a"), map[string]string{"initstate": "live\n"})
	writeTree(filepath.Join(p.Root, "proc/7/task/7"), map[string]string{"patch_state": "1\n", "comm": "sleeper\n"})
	mustState(t, p, "lp_a", Enabling)
	err := p.Disable(ctx, "lp_a")
	var te *TransitionError
	if !errors.As(err, &te) || te.Enable || te.Reverted || len(te.Tasks) != 1 || te.Tasks[0].Comm != "sleeper" {
		t.Fatalf("disable: %v (%+v)", err, te)
	}
	if !strings.Contains(err.Error(), "7 (sleeper)") || !strings.Contains(err.Error(), "not reverted") {
		t.Fatalf("message: %v", err)
	}
	mustState(t, p, "lp_a", Enabling)
}

func TestLoadModuleWithoutPatchIsUnloaded(t *testing.T) {
	p, k := newTestPatcher(t)
	k.noPatch = true
	mod := livepatchModule(t, "lp_a")
	if _, err := p.Load(context.Background(), mod); !errors.Is(err, ErrNotLivepatch) {
		t.Fatalf("load: %v", err)
	}
	mustState(t, p, "lp_a", Unloaded)
}

func TestUnloadRetriesBusyModule(t *testing.T) {
	ctx := context.Background()
	p, k := newTestPatcher(t)
	mod := livepatchModule(t, "lp_a")
	if _, err := p.Load(ctx, mod); err != nil {
		t.Fatal(err)
	}
	k.busy = 3
	if err := p.Unload(ctx, "lp_a"); err != nil {
		t.Fatal(err)
	}
	mustState(t, p, "lp_a", Unloaded)
	if got := k.Calls(); got != "load:lp_a delete:lp_a delete:lp_a delete:lp_a delete:lp_a" {
		t.Fatalf("calls %q", got)
	}
	// Busy for longer than the timeout: the error says so.
	if _, err := p.Load(ctx, mod); err != nil {
		t.Fatal(err)
	}
	k.busy = 1 << 30
	if err := p.Unload(ctx, "lp_a"); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("unload busy: %v", err)
	}
}

// linkBuildID links obj into a relocatable object with a GNU build-id, as kernel
// modules are.
func linkBuildID(t *testing.T, obj string) string {
	t.Helper()
	out := obj + ".id.ko"
	if b, err := exec.Command("ld", "-r", "--build-id", "-o", out, obj).CombinedOutput(); err != nil {
		t.Fatalf("ld: %v\n%s", err, b)
	}
	return out
}

func TestLoadRefusesAnotherBuild(t *testing.T) {
	ctx := context.Background()
	p, k := newTestPatcher(t)
	a := linkBuildID(t, livepatchModule(t, "lp_a"))
	b := linkBuildID(t, buildModule(t, "lp_a.ko", "name=lp_a", "vermagic="+testRelease+" SMP ", "livepatch=Y", "description=v2"))
	ma, err := p.Load(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(ma.BuildID) != 20 {
		t.Fatalf("build-id %x", ma.BuildID)
	}
	if _, err := p.Load(ctx, b); !errors.Is(err, ErrOtherModule) {
		t.Fatalf("load another build: %v", err)
	}
	if _, err := p.Load(ctx, a); err != nil {
		t.Fatalf("load same build again: %v", err)
	}
	if got := k.Calls(); got != "load:lp_a" {
		t.Fatalf("calls %q", got)
	}
}
