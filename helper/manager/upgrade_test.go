package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/health"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// recordChanges returns the list the manager's state changes are appended to, as
// "entity old->new".
func (e *env) recordChanges() *[]string {
	var changes []string
	e.m.cfg.OnChange = func(en *Entity, old, new State) {
		changes = append(changes, fmt.Sprintf("%s %s->%s", en.UUID(), old, new))
	}
	return &changes
}

// retarget rewrites the patch.json of an installed patch for another release of victim.
func (e *env) retarget(p *patchmeta.Patch, release string) {
	p.Target.Release = release
	f, err := os.Create(filepath.Join(e.root, PatchesDir, p.UUID, patchmeta.FileName))
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if err := p.Encode(f); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) upgrade(accept bool, ids ...string) ([]UpgradeResult, error) {
	return e.m.Upgrade(context.Background(), ids, UpgradeOptions{Accept: accept})
}

// TestUpgradeSupersedesAppliesAccepts is what `dnf hotpatch upgrade --accept` asks of the
// helper: the older patch of the target goes out, then the cumulative one comes in and
// is accepted, in that order, in one call; a patch of another target is left alone; a
// second upgrade changes nothing.
func TestUpgradeSupersedesAppliesAccepts(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.retarget(e.addPatch(pC, eC, "HP005", "1", "h"), "2") // for victim-1.0-2
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100, 101}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	e.installed["victim-1.0-2.x86_64"] = true
	if err := e.do(OpApply, true, pC); err != nil {
		t.Fatal(err)
	}
	// HP002 arrives (DNF installed its RPM); the upgrade must find it without a rescan.
	e.addPatch(pB, eB, "HP002", "1", "f")
	changes := e.recordChanges()
	rs, err := e.upgrade(true, "victim-1.0-1/HP002-1-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{eA + " ACTIVED->DEACTIVED", eA + " DEACTIVED->NOT-APPLIED",
		eB + " NOT-APPLIED->DEACTIVED", eB + " DEACTIVED->ACTIVED", eB + " ACTIVED->ACCEPTED"}
	if !slices.Equal(*changes, want) {
		t.Fatalf("state changes %v, want %v", *changes, want)
	}
	for _, pid := range []int{100, 101} {
		if e.eng.has(pid, eA) || !e.eng.has(pid, eB) || !e.eng.has(pid, eC) {
			t.Fatalf("pid %d holds %v, want B and C", pid, e.eng.in[pid])
		}
	}
	got := map[string]UpgradeResult{}
	for _, r := range rs {
		got[r.UUID] = r
	}
	if a := got[eA]; len(rs) != 2 || a.Action != syscarebus.UpgradeSuperseded || a.From != Actived || a.State != NotApplied ||
		!strings.Contains(a.Detail, "HP002-1-1") {
		t.Fatalf("results %+v, want A superseded by HP002 and B", rs)
	}
	if b := got[eB]; b.Action != syscarebus.UpgradeApplied || b.From != NotApplied || b.State != Accepted {
		t.Fatalf("B: %+v, want applied to ACCEPTED", b)
	}
	if e.state(eC) != Actived {
		t.Fatalf("the patch of victim-1.0-2 is %s, want left ACTIVED", e.state(eC))
	}

	*changes = nil
	rs, err = e.upgrade(true, pB)
	if err != nil || len(*changes) != 0 || len(rs) != 1 || rs[0].Action != syscarebus.UpgradeUnchanged {
		t.Fatalf("second upgrade: %+v %v, changes %v; want B unchanged and nothing done", rs, err, *changes)
	}
}

// TestUpgradeActivatesDeactivated: a deactivated patch is activated again, not reloaded.
func TestUpgradeActivatesDeactivated(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpDeactive, false, pA); err != nil {
		t.Fatal(err)
	}
	rs, err := e.upgrade(false, pA)
	if err != nil || len(rs) != 1 || rs[0].Action != syscarebus.UpgradeActivated || rs[0].State != Actived || !e.eng.has(100, eA) {
		t.Fatalf("upgrade of a DEACTIVED patch: %+v %v", rs, err)
	}
}

// TestUpgradeFailureRollsBackEverything: the second new patch fails in one process after
// the old patch was superseded and the first new one applied: everything goes back, the
// superseded patch included, and the error names the step and the entity.
func TestUpgradeFailureRollsBackEverything(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pB, eB, "HP002", "1", "f")
	e.addPatch(pC, eC, "HP003", "1", "h")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100, 101}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	e.eng.fail[101] = fmt.Errorf("%w: function h is running", ErrBusy)
	e.eng.failUUID = eC
	_, err := e.upgrade(true, pB, pC)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "apply victim-1.0-1/HP003-1-1/victim") ||
		syscarebus.NameOf(err) != syscarebus.ErrorBusy ||
		!strings.HasSuffix(err.Error(), "; put back: victim-1.0-1/HP001-1-1/victim (ACTIVED), victim-1.0-1/HP002-1-1/victim (NOT-APPLIED)") {
		t.Fatalf("upgrade: %v, want Busy naming the apply of HP003 and what was put back", err)
	}
	if e.state(eA) != Actived || e.state(eB) != NotApplied || e.state(eC) != NotApplied {
		t.Fatalf("after rollback A %s B %s C %s, want ACTIVED NOT-APPLIED NOT-APPLIED", e.state(eA), e.state(eB), e.state(eC))
	}
	for _, pid := range []int{100, 101} {
		if !e.eng.has(pid, eA) || e.eng.has(pid, eB) || e.eng.has(pid, eC) {
			t.Fatalf("pid %d holds %v after rollback, want only A", pid, e.eng.in[pid])
		}
	}
	// An unknown id: nothing is touched.
	changes := e.recordChanges()
	if _, err := e.upgrade(false, pB, "victim-1.0-1/HP404"); !errors.Is(err, ErrNotFound) || len(*changes) != 0 {
		t.Fatalf("unknown id: %v, changes %v", err, *changes)
	}
}

// TestUpgradeHealthGate: with health checks the upgrade soaks at ACTIVED and accepts only
// after every run passed; a failed check, or a hung one killed at its timeout, puts
// everything back (the superseded patch in again) and names the check and its output.
func TestUpgradeHealthGate(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	if err := e.do(OpApply, false, pA); err != nil {
		t.Fatal(err)
	}
	e.addPatch(pB, eB, "HP002", "1", "f")
	gate := func(timeout time.Duration, lines ...string) HealthGate {
		g := HealthGate{Soak: 300 * time.Millisecond, Interval: 100 * time.Millisecond, ByTarget: map[string][]health.Check{}}
		for _, l := range lines {
			c, err := health.New(l, timeout)
			if err != nil {
				t.Fatal(err)
			}
			g.ByTarget["victim"] = append(g.ByTarget["victim"], c)
		}
		return g
	}
	// The check fails on its third run (a counter file): the soak is really repeated.
	count := filepath.Join(t.TempDir(), "runs")
	flaky := `sh -c 'echo x >> ` + count + `; n=$(wc -l < ` + count + `); echo "run $n"; [ $n -lt 3 ]'`
	changes := e.recordChanges()
	// A long soak, so that a loaded machine still gets to the third round; it ends there.
	g := gate(0, "true", flaky)
	g.Soak = time.Minute
	_, err := e.m.Upgrade(context.Background(), []string{pB}, UpgradeOptions{Accept: true, Health: g})
	if !errors.Is(err, syscarebus.ErrHealth) || !strings.Contains(err.Error(), flaky) || !strings.Contains(err.Error(), "exit status 1; output: run 3") ||
		!strings.Contains(err.Error(), "put back: victim-1.0-1/HP001-1-1/victim (ACTIVED), victim-1.0-1/HP002-1-1/victim (NOT-APPLIED)") {
		t.Fatalf("failed check: %v", err)
	}
	want := []string{eA + " ACTIVED->DEACTIVED", eA + " DEACTIVED->NOT-APPLIED", eB + " NOT-APPLIED->DEACTIVED", eB + " DEACTIVED->ACTIVED",
		eB + " ACTIVED->DEACTIVED", eB + " DEACTIVED->NOT-APPLIED", eA + " NOT-APPLIED->DEACTIVED", eA + " DEACTIVED->ACTIVED"}
	if !slices.Equal(*changes, want) {
		t.Fatalf("state changes %v, want %v", *changes, want)
	}
	if !e.eng.has(100, eA) || e.eng.has(100, eB) {
		t.Fatalf("pid 100 holds %v after the rollback, want A only", e.eng.in[100])
	}

	start := time.Now()
	_, err = e.m.Upgrade(context.Background(), []string{pB}, UpgradeOptions{Accept: true, Health: gate(200*time.Millisecond, "sleep 30")})
	if !errors.Is(err, syscarebus.ErrHealth) || !strings.Contains(err.Error(), "killed at its timeout of 200ms") || time.Since(start) > 5*time.Second {
		t.Fatalf("hung check: %v after %s", err, time.Since(start))
	}
	if !e.eng.has(100, eA) || e.eng.has(100, eB) {
		t.Fatalf("pid 100 holds %v after the hung check, want A only", e.eng.in[100])
	}

	*changes = nil
	rs, err := e.m.Upgrade(context.Background(), []string{pB}, UpgradeOptions{Accept: true, Health: gate(0, "true")})
	if err != nil {
		t.Fatal(err)
	}
	if st := e.state(eB); st != Accepted || !e.eng.has(100, eB) || e.eng.has(100, eA) {
		t.Fatalf("healthy upgrade: B %s, pid 100 holds %v", st, e.eng.in[100])
	}
	if last := (*changes)[len(*changes)-1]; last != eB+" ACTIVED->ACCEPTED" {
		t.Fatalf("accepted last? changes %v", *changes)
	}
	for _, r := range rs {
		// At once, then every interval until the soak's end: up to 4 rounds, fewer when a
		// loaded machine makes one round take longer than the interval, never fewer than
		// the first and the last.
		if r.UUID != eB {
			continue
		}
		m := regexp.MustCompile("^healthy: ([0-9]+) run\\(s\\) of `true` over 300ms$").FindStringSubmatch(r.Detail)
		if m == nil || m[1] < "2" || m[1] > "4" {
			t.Fatalf("healthy result detail %q, want 2 to 4 runs of `true` over 300ms", r.Detail)
		}
	}
	// Nothing to move: no soak, nothing changes (the check, `false`, would fail if it ran).
	if _, err := e.m.Upgrade(context.Background(), []string{pB}, UpgradeOptions{Accept: true, Health: gate(0, "false")}); err != nil {
		t.Fatalf("second upgrade: %v", err)
	}
}

// TestSoakHoldsOtherTransactions: while a soak runs, reads answer at once and another
// transaction waits for the soak's end, saying so in the log; it never runs in between.
func TestSoakHoldsOtherTransactions(t *testing.T) {
	e := newEnv(t)
	e.addPatch(pA, eA, "HP001", "1", "f")
	e.addPatch(pC, eC, "HP005", "1", "g")
	e.m.Rescan()
	e.eng.pids[filepath.Join(e.root, hst)] = []int{100}
	var logged strings.Builder
	var logMu sync.Mutex
	log := logrus.New()
	log.SetOutput(writerFunc(func(b []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return logged.Write(b) }))
	e.m.cfg.Log = log
	c, _ := health.New("true", 0)
	done := make(chan error, 1)
	go func() {
		_, err := e.m.Upgrade(context.Background(), []string{pA}, UpgradeOptions{Accept: true,
			Health: HealthGate{Checks: []health.Check{c}, Soak: 2 * time.Second, Interval: 100 * time.Millisecond}})
		done <- err
	}()
	// 30 s only guards against a hang: a loaded machine may take seconds to get here.
	for end := time.Now().Add(30 * time.Second); e.state(eA) != Actived; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the upgrade did not reach ACTIVED")
		}
	}
	// A read answers during the soak: the upgrade is still running when it returns.
	if _, err := e.m.Status([]string{pA}); err != nil || len(done) != 0 || e.state(eA) != Actived {
		t.Fatalf("status during the soak: %v; upgrade ended %v, A %s", err, len(done) != 0, e.state(eA))
	}
	if _, err := e.m.Transition(context.Background(), OpApply, []string{pC}, false); err != nil {
		t.Fatal(err)
	}
	// The upgrade accepts A before it lets the transaction lock go: an apply that ran
	// during the soak would return with A still ACTIVED. (The upgrade's goroutine may
	// not have sent its result yet: it unlocks first, and a loaded machine can run
	// this goroutine in between.)
	if st := e.state(eA); st != Accepted {
		t.Fatalf("the apply ran before the soak ended: A is %s when the apply returns", st)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the upgrade did not return after its soak")
	}
	logMu.Lock()
	defer logMu.Unlock()
	if e.state(eA) != Accepted || e.state(eC) != Actived || !strings.Contains(logged.String(), "another transaction holds the helper; waiting for it to end") {
		t.Fatalf("A %s, C %s, log:\n%s", e.state(eA), e.state(eC), logged.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }
