package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/helper/state"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/runtime/patchobj"
)

// fakeEngine keeps the patch uuids "inside" fake processes: the narrow fake the state
// machine tests run against (the real engine is exercised by the helper's end-to-end tests).
type fakeEngine struct {
	mu   sync.Mutex
	pids map[string][]int
	in   map[int][]string
	fail map[int]error // PatchAll fails for these pids
	// failUUID limits fail to one patch ("" for all).
	failUUID string
	// funcs are the function names Live reports per patch uuid (as headers would).
	funcs map[string][]string
	calls []string
}

func newFake() *fakeEngine {
	return &fakeEngine{pids: map[string][]int{}, in: map[int][]string{}, fail: map[int]error{}}
}

func (f *fakeEngine) Processes(path string) ([]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pids[path]), nil
}

func (f *fakeEngine) PatchAll(pids []int, _ *patchobj.Object, _, uuid string, _ bool, progress func(done, total int)) []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	errs := make([]error, len(pids))
	for i, pid := range pids {
		f.calls = append(f.calls, fmt.Sprintf("patch %d %s", pid, uuid))
		if err := f.fail[pid]; err != nil && (f.failUUID == "" || f.failUUID == uuid) {
			errs[i] = err
			continue
		}
		if !slices.Contains(f.in[pid], uuid) {
			f.in[pid] = append(f.in[pid], uuid)
		}
		if progress != nil {
			progress(i+1, len(pids))
		}
	}
	return errs
}

func (f *fakeEngine) UnpatchAll(pids []int, _, uuid string, _ bool, progress func(done, total int)) []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, pid := range pids {
		f.calls = append(f.calls, fmt.Sprintf("unpatch %d %s", pid, uuid))
		f.in[pid] = slices.DeleteFunc(f.in[pid], func(s string) bool { return s == uuid })
		if progress != nil {
			progress(i+1, len(pids))
		}
	}
	return make([]error, len(pids))
}

func (f *fakeEngine) Applied(pid int) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.in[pid]), nil
}

func (f *fakeEngine) Live() ([]LivePatch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	byUUID := map[string]*LivePatch{}
	var out []LivePatch
	pids := slices.Sorted(maps.Keys(f.in))
	for _, pid := range pids {
		for _, id := range f.in[pid] {
			lp := byUUID[id]
			if lp == nil {
				lp = &LivePatch{UUID: id, Funcs: f.funcs[id]}
				for path, ps := range f.pids {
					if slices.Contains(ps, pid) {
						lp.Target = path
					}
				}
				byUUID[id] = lp
			}
			lp.Pids = append(lp.Pids, pid)
		}
	}
	for _, lp := range byUUID {
		out = append(out, *lp)
	}
	return out, nil
}

func (f *fakeEngine) has(pid int, uuid string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.in[pid], uuid)
}

var (
	objOnce  sync.Once
	objBytes []byte
	objErr   error
)

// patchObject compiles a minimal upatch.h patch once.
func patchObject(t *testing.T) []byte {
	objOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mgrobj")
		if err != nil {
			objErr = err
			return
		}
		defer os.RemoveAll(dir)
		src := "#include <upatch.h>\nint f_v2(void) { return 2; }\nUPATCH_FUNC(f, f_v2);\n"
		os.WriteFile(filepath.Join(dir, "p.c"), []byte(src), 0o644)
		inc, _ := filepath.Abs("../../runtime/include")
		out, err := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", inc,
			"-o", filepath.Join(dir, "p.o"), filepath.Join(dir, "p.c")).CombinedOutput()
		if err != nil {
			objErr = fmt.Errorf("gcc: %v: %s", err, out)
			return
		}
		objBytes, objErr = os.ReadFile(filepath.Join(dir, "p.o"))
	})
	if objErr != nil {
		t.Fatal(objErr)
	}
	return objBytes
}

type env struct {
	t    *testing.T
	root string
	eng  *fakeEngine
	m    *Manager
	// installed is what the fake rpmdb holds.
	installed map[string]bool
	// watch records which targets are watched for new processes.
	watch *fakeWatch
}

type fakeWatch struct{ on map[string]bool }

func (w *fakeWatch) Add(path string) error    { w.on[path] = true; return nil }
func (w *fakeWatch) Remove(path string) error { delete(w.on, path); return nil }

func newEnv(t *testing.T) *env {
	e := &env{t: t, root: t.TempDir(), eng: newFake(), installed: map[string]bool{}, watch: &fakeWatch{on: map[string]bool{}}}
	os.MkdirAll(filepath.Join(e.root, "usr/bin"), 0o755)
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(e.root, "usr/bin/victim"), b, 0o755)
	e.restart()
	return e
}

// restart makes a new manager over the same root and fake processes (a helper restart).
func (e *env) restart() {
	log := logrus.New()
	log.SetOutput(testWriter{e.t})
	var m *Manager
	m = New(Config{
		Root: e.root,
		Log:  log,
		Drivers: map[string]Driver{
			patchmeta.KindUser:   &UserDriver{Engine: e.eng, Host: func(p string) string { return m.HostPath(p) }, Watch: e.watch},
			patchmeta.KindKernel: Unsupported(patchmeta.KindKernel),
		},
		VerifyPackage: func(_ context.Context, _ string, p patchmeta.Package) error {
			if !e.installed[p.NEVRA()] {
				return fmt.Errorf("not installed: %s", p.NEVRA())
			}
			return nil
		},
	})
	e.m = m
	if err := m.Start(context.Background()); err != nil {
		e.t.Logf("start: %v", err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// addPatch installs a patch directory with one user entity replacing funcs.
func (e *env) addPatch(uuid, entUUID, name, version string, funcs ...string) *patchmeta.Patch {
	obj := patchObject(e.t)
	sum := fmt.Sprintf("%x", sha256sum(obj))
	p := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: uuid, Name: name, Version: version, Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindUser,
		Target: patchmeta.Package{Name: "victim", Version: "1.0", Release: "1", Arch: "x86_64"}}
	ent := patchmeta.Entity{UUID: entUUID, File: "victim.o", TargetPath: "/usr/bin/victim", SHA256: sum}
	for _, f := range funcs {
		ent.Functions = append(ent.Functions, patchmeta.Function{Name: f})
	}
	p.Entities = []patchmeta.Entity{ent}
	dir := filepath.Join(e.root, PatchesDir, uuid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "victim.o"), obj, 0o644)
	f, _ := os.Create(filepath.Join(dir, patchmeta.FileName))
	if err := p.Encode(f); err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	e.installed[p.Target.NEVRA()] = true
	return p
}

func (e *env) state(id string) State {
	e.t.Helper()
	ss, err := e.m.Status([]string{id})
	if err != nil {
		e.t.Fatalf("status %s: %v", id, err)
	}
	return ss[0].State
}

func (e *env) do(op Op, force bool, ids ...string) error {
	_, err := e.m.Transition(context.Background(), op, ids, force)
	return err
}

const (
	pA  = "00000000-0000-4000-8000-00000000000a"
	eA  = "00000000-0000-4000-8000-0000000000ea"
	pB  = "00000000-0000-4000-8000-00000000000b"
	eB  = "00000000-0000-4000-8000-0000000000eb"
	pC  = "00000000-0000-4000-8000-00000000000c"
	eC  = "00000000-0000-4000-8000-0000000000ec"
	hst = "/usr/bin/victim"
)

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	host := filepath.Join(e.root, hst)
	e.eng.pids[host] = []int{100, 101}

	steps := []struct {
		op   Op
		want State
		in   bool
	}{{OpApply, Actived, true}, {OpDeactive, Deactived, false}, {OpActive, Actived, true},
		{OpAccept, Accepted, true}, {OpDeactive, Deactived, false}, {OpRemove, NotApplied, false}}
	for _, s := range steps {
		if err := e.do(s.op, false, "victim-1.0-1/HP001"); err != nil {
			t.Fatalf("%s: %v", s.op, err)
		}
		if got := e.state(eA); got != s.want {
			t.Fatalf("%s: state %s, want %s", s.op, got, s.want)
		}
		for _, pid := range []int{100, 101} {
			if e.eng.has(pid, eA) != s.in {
				t.Fatalf("%s: pid %d has patch = %v", s.op, pid, !s.in)
			}
		}
	}
	if err := e.do(OpActive, false, pA); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("active on NOT-APPLIED: %v", err)
	}
	if err := e.do(OpAccept, false, pA); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("accept on NOT-APPLIED: %v", err)
	}
}

func TestIdentifiers(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP001", "2", "g")
	e.m.Rescan()
	for id, want := range map[string]string{
		eA: eA, pA: eA, "victim-1.0-1/HP001-1-1/victim": eA, "victim-1.0-1/HP001-2-1": eB,
		"patch-victim-1.0-1-HP001-2-1": eB,
	} {
		es, err := e.m.Entities([]string{id})
		if err != nil || len(es) != 1 || es[0].UUID() != want {
			t.Errorf("%s: %v %v", id, es, err)
		}
	}
	for _, id := range []string{"victim-1.0-1/HP001", "patch-victim-1.0-1-HP001", "nope"} {
		if _, err := e.m.Entities([]string{id}); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: err %v, want not found (ambiguous or unknown)", id, err)
		}
	}
}

func TestRollback(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "g")
	e.addPatch(pC, eC, "HP003", "1", "h")
	e.m.Rescan()
	host := filepath.Join(e.root, hst)
	e.eng.pids[host] = []int{100, 101}
	if err := e.do(OpApply, false, pC); err != nil {
		t.Fatal(err)
	}
	// B's patch file is corrupted: verification fails after A went in.
	os.WriteFile(filepath.Join(e.root, PatchesDir, pB, "victim.o"), []byte("x"), 0o644)
	err := e.do(OpApply, false, pA, pB)
	if !errors.Is(err, ErrVerify) {
		t.Fatalf("apply A B: %v, want verification failure", err)
	}
	if e.state(eA) != NotApplied || e.eng.has(100, eA) {
		t.Fatalf("A not rolled back: %s", e.state(eA))
	}
	// Activate C and apply B together where B fails in one process: C goes back.
	os.WriteFile(filepath.Join(e.root, PatchesDir, pB, "victim.o"), patchObject(t), 0o644)
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpDeactive, false, pC); err != nil {
		t.Fatal(err)
	}
	e.eng.fail[101] = errors.New("function busy")
	e.eng.failUUID = eB
	err = e.do(OpApply, false, pC, pB)
	if err == nil || !strings.Contains(err.Error(), "pid 101") {
		t.Fatalf("active C B: %v, want failure naming pid 101", err)
	}
	if e.state(eC) != Deactived || e.eng.has(100, eC) || e.state(eB) != NotApplied || e.eng.has(100, eB) {
		t.Fatalf("not rolled back: C %s B %s, in 100: %v", e.state(eC), e.state(eB), e.eng.in[100])
	}
}

func TestConflictAndLIFO(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "f", "g")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpApply, false, pB); !errors.Is(err, ErrConflict) {
		t.Fatalf("apply B over A: %v, want conflict", err)
	}
	if e.state(eB) != NotApplied {
		t.Fatalf("B is %s after refused apply", e.state(eB))
	}
	if err := e.do(OpApply, true, pB); err != nil {
		t.Fatalf("apply --force: %v", err)
	}
	if err := e.do(OpDeactive, false, pA); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "HP002") {
		t.Fatalf("deactive A under B: %v, want LIFO refusal naming HP002", err)
	}
	// Both at once: the helper orders them last-in first-out.
	if err := e.do(OpDeactive, false, pA, pB); err != nil {
		t.Fatalf("deactive A B: %v", err)
	}
	var order []string
	for _, c := range e.eng.calls {
		if strings.HasPrefix(c, "unpatch") {
			order = append(order, c)
		}
	}
	if len(order) != 2 || !strings.HasSuffix(order[0], eB) {
		t.Fatalf("unpatch order %v, want B first", order)
	}
}

func TestRestartRecovery(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "g")
	e.addPatch(pC, eC, "HP003", "1", "h")
	e.m.Rescan()
	host := filepath.Join(e.root, hst)
	e.eng.pids[host] = []int{100}
	for _, id := range []string{pA, pB, pC} {
		if err := e.do(OpApply, false, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.do(OpAccept, false, pA); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpDeactive, false, pC); err != nil {
		t.Fatal(err)
	}

	// Helper killed and restarted, processes untouched; a process started meanwhile.
	e.eng.pids[host] = []int{100, 102}
	e.restart()
	if e.state(eA) != Accepted || e.state(eB) != Actived || e.state(eC) != Deactived {
		t.Fatalf("after restart: %s %s %s", e.state(eA), e.state(eB), e.state(eC))
	}
	if !e.eng.has(102, eA) || !e.eng.has(102, eB) || e.eng.has(102, eC) {
		t.Fatalf("new process 102 has %v", e.eng.in[102])
	}

	// State file lost: in-process headers are the record.
	os.Remove(filepath.Join(e.root, StateDir, state.CurrentFile))
	e.restart()
	if e.state(eA) != Actived || e.state(eB) != Actived {
		t.Fatalf("from headers: %s %s", e.state(eA), e.state(eB))
	}
	e.do(OpAccept, false, pA)

	// "Reboot": processes restarted without patches, helper restarted.
	e.eng.pids[host] = []int{200}
	e.restart()
	if e.state(eA) != Accepted || e.state(eB) != NotApplied || !e.eng.has(200, eA) || e.eng.has(200, eB) {
		t.Fatalf("after reboot: A %s B %s, in 200: %v", e.state(eA), e.state(eB), e.eng.in[200])
	}
}

func TestSaveRestore(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "g")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	e.do(OpApply, false, pA)
	e.do(OpAccept, false, pA)
	e.do(OpApply, false, pB)
	if err := e.m.Save(); err != nil {
		t.Fatal(err)
	}
	e.do(OpRemove, false, pA, pB)
	if _, err := e.m.Restore(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if e.state(eA) != Accepted || e.state(eB) != NotApplied {
		t.Fatalf("restore --accepted: %s %s", e.state(eA), e.state(eB))
	}
	if _, err := e.m.Restore(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if e.state(eA) != Accepted || e.state(eB) != Actived {
		t.Fatalf("restore: %s %s", e.state(eA), e.state(eB))
	}
	// The current state file follows every transition.
	b, _ := os.ReadFile(filepath.Join(e.root, StateDir, state.CurrentFile))
	var snap state.Snapshot
	json.Unmarshal(b, &snap)
	if len(snap.Entries) != 2 {
		t.Fatalf("state file %s", b)
	}
}

func TestBrokenAndRefused(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	bad := filepath.Join(e.root, PatchesDir, "bad")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, patchmeta.FileName), []byte(`{"schema":1,`), 0o644)
	kern := e.addPatch(pB, eB, "KP001", "1", "f")
	kern.Kind = patchmeta.KindKernel
	f, _ := os.Create(filepath.Join(e.root, PatchesDir, pB, patchmeta.FileName))
	kern.Encode(f)
	f.Close()
	e.m.Rescan()
	list, broken := e.m.List()
	if len(list) != 2 || len(broken) != 1 || broken[0].Dir != "bad" || !strings.Contains(broken[0].Reason, "invalid") {
		t.Fatalf("list %+v broken %+v", list, broken)
	}
	if err := e.do(OpApply, false, pB); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "kernel patches are not supported") {
		t.Fatalf("kernel apply: %v", err)
	}
	delete(e.installed, "victim-1.0-1.x86_64")
	if err := e.do(OpApply, false, pA); !errors.Is(err, ErrVerify) {
		t.Fatalf("apply without target package: %v", err)
	}
}

func TestCorruptStateAndGoneDirectory(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	// A corrupt state file is moved aside; the process headers still tell the truth.
	sf := filepath.Join(e.root, StateDir, state.CurrentFile)
	os.WriteFile(sf, []byte("{garbage"), 0o600)
	e.restart()
	if e.state(eA) != Actived {
		t.Fatalf("after corrupt state file: %s", e.state(eA))
	}
	if _, err := os.Stat(sf + ".bad"); err != nil {
		t.Fatalf("corrupt state file not kept aside: %v", err)
	}
	// The patch directory vanishes while applied (RPM erased without %preun): the patch
	// stays listed with the problem and can still be removed.
	os.RemoveAll(filepath.Join(e.root, PatchesDir, pA))
	e.m.Rescan()
	list, _ := e.m.List()
	if len(list) != 1 || list[0].Problem == "" {
		t.Fatalf("list after directory removal: %+v", list)
	}
	if err := e.do(OpRemove, false, pA); err != nil {
		t.Fatal(err)
	}
	if e.eng.has(100, eA) {
		t.Fatal("patch still in the process")
	}
	if list, _ := e.m.List(); len(list) != 0 {
		t.Fatalf("removed patch still listed: %+v", list)
	}
}

// TestGoneAtRestart: the helper restarts while a live patch's directory is missing. The
// in-process headers bring it back: listed with its processes, ACTIVED, removable; and
// when the directory comes back the patch is whole again.
func TestGoneAtRestart(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "g")
	e.m.Rescan()
	host := filepath.Join(e.root, hst)
	e.eng.pids[host] = []int{100, 101}
	e.eng.funcs = map[string][]string{eA: {"f"}, eB: {"g"}}
	if err := e.do(OpApply, false, pA, pB); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpAccept, false, pB); err != nil {
		t.Fatal(err)
	}
	// A crash inside WriteFileAtomic left a temp file; it goes at start.
	tmp := filepath.Join(e.root, StateDir, ".state.json.tmp123456")
	os.WriteFile(tmp, []byte("{"), 0o600)
	aside := filepath.Join(e.root, "aside")
	os.MkdirAll(aside, 0o755)
	for _, p := range []string{pA, pB} {
		if err := os.Rename(filepath.Join(e.root, PatchesDir, p), filepath.Join(aside, p)); err != nil {
			t.Fatal(err)
		}
	}
	e.restart()
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp file left: %v", err)
	}
	if e.state(eA) != Actived || e.state(eB) != Accepted {
		t.Fatalf("after restart with directories missing: A %s B %s", e.state(eA), e.state(eB))
	}
	list, _ := e.m.List()
	if len(list) != 2 || list[0].Name != "victim-1.0-1/HP001-1-1/victim" || !strings.Contains(list[0].Problem, "pids 100, 101") {
		t.Fatalf("list: %+v", list)
	}
	ps, _, err := e.m.ProcessStatus(context.Background(), pA)
	if err != nil || len(ps) != 1 {
		t.Fatalf("processes: %v %v", ps, err)
	}
	for _, p := range ps {
		if len(p) != 2 || p[0].State != Actived {
			t.Fatalf("processes: %+v", p)
		}
	}
	// It cannot be activated again without its files, but it can be removed.
	if err := e.do(OpDeactive, false, pA); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpActive, false, pA); !errors.Is(err, ErrVerify) {
		t.Fatalf("active without files: %v", err)
	}
	if err := e.do(OpRemove, false, "victim-1.0-1/HP001-1-1/victim"); err != nil {
		t.Fatal(err)
	}
	if e.eng.has(100, eA) || e.eng.has(101, eA) {
		t.Fatal("removed patch still in a process")
	}
	if _, err := e.m.Status([]string{pA}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed rebuilt patch still known: %v", err)
	}

	// State file lost too: the header alone keeps B, under its entity uuid.
	os.Remove(filepath.Join(e.root, StateDir, state.CurrentFile))
	e.restart()
	if e.state(eB) != Actived {
		t.Fatalf("from the header alone: %s", e.state(eB))
	}
	if e.m.Watching() {
		t.Fatal("a patch without object keeps the helper watching for new processes")
	}
	// The directory comes back: the patch takes its metadata again and keeps its state;
	// a process started meanwhile gets it.
	e.eng.pids[host] = []int{100, 101, 102}
	os.Rename(filepath.Join(aside, pB), filepath.Join(e.root, PatchesDir, pB))
	e.m.Rescan()
	if !e.eng.has(102, eB) || !e.m.Watching() {
		t.Fatalf("after the directory came back: process 102 has %v, watching %v", e.eng.in[102], e.m.Watching())
	}
	list, broken := e.m.List()
	if len(list) != 1 || list[0].Problem != "" || list[0].PatchUUID != pB || list[0].State != Actived || len(broken) != 0 {
		t.Fatalf("after the directory came back: %+v %+v", list, broken)
	}
	// Loaded again: a new process gets it.
	if err := e.m.PatchNewProcess(context.Background(), 103, host); err != nil || !e.eng.has(103, eB) {
		t.Fatalf("new process: %v", err)
	}
	if err := e.do(OpRemove, false, pB); err != nil {
		t.Fatal(err)
	}
	if e.eng.has(100, eB) {
		t.Fatal("B still in the process")
	}
}

// TestUnlistedLiveEntity: the helper died after patching the processes but before
// recording it: the header, not the state file, says the patch is in.
func TestUnlistedLiveEntity(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	st := state.Store{Dir: filepath.Join(e.root, StateDir)}
	if err := st.Save(state.CurrentFile, &state.Snapshot{BootID: state.BootID(), Seq: 1}); err != nil {
		t.Fatal(err)
	}
	e.restart()
	if got := e.state(eA); got != Actived {
		t.Fatalf("live entity missing from the state file: %s", got)
	}
}

// TestRebuiltKeepsOthersWatch: removing a rebuilt patch (which never armed the watch)
// leaves the watch of another active patch of the same target armed.
func TestRebuiltKeepsOthersWatch(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "g")
	e.m.Rescan()
	host := filepath.Join(e.root, hst)
	e.eng.pids[host] = []int{100}
	e.eng.funcs = map[string][]string{eA: {"f"}, eB: {"g"}}
	if err := e.do(OpApply, false, pA, pB); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(e.root, PatchesDir, pB))
	e.watch.on = map[string]bool{}
	e.restart()
	if !e.watch.on[host] || e.state(eB) != Actived {
		t.Fatalf("after restart: watched %v, B %s", e.watch.on, e.state(eB))
	}
	if err := e.do(OpRemove, false, pB); err != nil {
		t.Fatal(err)
	}
	if !e.watch.on[host] {
		t.Fatal("removing the rebuilt patch disarmed the watch of the active one")
	}
}

// TestRebuiltNotReplacedByOtherPatchJSON: a directory that comes back under the patch's
// uuid but without the live entity is broken; the live entity stays known.
func TestRebuiltNotReplacedByOtherPatchJSON(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(e.root, PatchesDir, pA))
	e.restart()
	e.addPatch(pA, eB, "HP001", "1", "f")
	e.m.Rescan()
	list, broken := e.m.List()
	if len(broken) != 1 || broken[0].Dir != pA || !strings.Contains(broken[0].Reason, "entity "+eA+" is live in processes but not in this patch.json") {
		t.Fatalf("broken %+v", broken)
	}
	if len(list) != 1 || list[0].UUID != eA || list[0].State != Actived || list[0].Problem == "" {
		t.Fatalf("list %+v", list)
	}
	if err := e.do(OpRemove, false, eA); err != nil || e.eng.has(100, eA) {
		t.Fatalf("remove: %v, still in: %v", err, e.eng.has(100, eA))
	}
}

// TestForeignLivePatchIgnored: a process patched under another root (another test's
// sandbox, a container's image) is not this manager's, however its header reads.
func TestForeignLivePatchIgnored(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	e.eng.pids["/elsewhere/usr/bin/other"] = []int{200}
	e.eng.in[200] = []string{"44444444-0000-4000-8000-0000000000e4"}
	e.restart()
	list, _ := e.m.List()
	if len(list) != 1 {
		t.Fatalf("list after restart: %+v, want only the installed patch", list)
	}
}

// TestSafeUUID: a uuid read from a process names a directory only when it is plain.
func TestSafeUUID(t *testing.T) {
	for id, want := range map[string]bool{"44444444-0000-4000-8000-0000000000e4": true, "HP001_1.x": true,
		"": false, ".": false, "..": false, "../etc": false, "a/b": false, "a b": false, strings.Repeat("a", 65): false} {
		if got := safeUUID(id); got != want {
			t.Errorf("safeUUID(%q) = %v, want %v", id, got, want)
		}
	}
}
