package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/tests/testenv"
)

var (
	hp1 = patchSpec{uuid: "11111111-0000-4000-8000-000000000001", entity: "11111111-0000-4000-8000-0000000000e1",
		name: "HP001", object: "greet2", funcs: []string{"greet"}}
	hp2 = patchSpec{uuid: "22222222-0000-4000-8000-000000000002", entity: "22222222-0000-4000-8000-0000000000e2",
		name: "HP002", object: "world20", funcs: []string{"world"}}
	hp3 = patchSpec{uuid: "33333333-0000-4000-8000-000000000003", entity: "33333333-0000-4000-8000-0000000000e3",
		name: "HP003", object: "greet3", funcs: []string{"greet"}}
)

func TestLifecycle(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	v1, v2 := s.startVictim(), s.startVictim()

	out := s.must("list")
	if !strings.HasPrefix(out, "Uuid") || !strings.Contains(out, hp1.entity) ||
		!strings.Contains(out, "victim-1.0-1/HP001-1-1/victim") || !strings.Contains(out, "NOT-APPLIED") {
		t.Fatalf("list:\n%s", out)
	}
	if out := s.must("apply", "victim-1.0-1/HP001"); out != "victim-1.0-1/HP001-1-1/victim: ACTIVED\n" {
		t.Fatalf("apply: %q", out)
	}
	s.waitOutput(v1, "2 10")
	s.waitOutput(v2, "2 10")
	if st := s.status(hp1.uuid); st != "ACTIVED" {
		t.Fatalf("status %s", st)
	}
	info := s.must("info", hp1.uuid)
	for _, want := range []string{"name:        HP001", "target:      victim-1.0-1.x86_64", "functions: greet", "status: ACTIVED"} {
		if !strings.Contains(info, want) {
			t.Errorf("info lacks %q:\n%s", want, info)
		}
	}
	if tg := s.must("target", "patch-victim-1.0-1-HP001"); !strings.Contains(tg, "name:     victim") || !strings.Contains(tg, "version:  1.0") {
		t.Errorf("target:\n%s", tg)
	}
	var ps []syscarebus.ProcessState
	json.Unmarshal([]byte(s.must("--json", "processes", hp1.uuid)), &ps)
	if len(ps) != 2 || ps[0].Status != "ACTIVED" || ps[1].Status != "ACTIVED" {
		t.Errorf("processes: %+v", ps)
	}

	s.must("deactive", hp1.entity)
	s.waitOutput(v1, "1 10")
	if st := s.status(hp1.uuid); st != "DEACTIVED" {
		t.Fatalf("after deactive: %s", st)
	}
	s.must("active", hp1.uuid)
	s.waitOutput(v2, "2 10")
	if out := s.must("accept", hp1.uuid); !strings.Contains(out, ": ACCEPTED") {
		t.Fatalf("accept: %q", out)
	}
	s.must("remove", hp1.uuid)
	s.waitOutput(v1, "1 10")
	s.waitOutput(v2, "1 10")
	if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
		t.Fatalf("after remove: %s", st)
	}
	// Operations that do not apply to the state fail with a message.
	if e := s.fails("accept", hp1.uuid); !strings.Contains(e, "NOT-APPLIED") {
		t.Errorf("accept NOT-APPLIED: %s", e)
	}
	if e := s.fails("status", "no-such-patch"); !strings.Contains(e, "not found") {
		t.Errorf("unknown id: %s", e)
	}
}

func TestTransactionConflictLIFO(t *testing.T) {
	s := newSandbox(t)
	bad := patchSpec{uuid: "44444444-0000-4000-8000-000000000004", entity: "44444444-0000-4000-8000-0000000000e4",
		name: "HP004", object: "greet3", funcs: []string{"greet"}, corrupt: true}
	for _, p := range []patchSpec{hp1, hp2, hp3, bad} {
		s.install(p)
	}
	v := s.startVictim()

	// Several ids, the last one fails verification: the first goes back.
	if e := s.fails("apply", hp2.uuid, bad.uuid); !strings.Contains(e, "sha256") {
		t.Fatalf("apply with a corrupt patch: %s", e)
	}
	if st := s.status(hp2.uuid); st != "NOT-APPLIED" {
		t.Fatalf("HP002 after rollback: %s", st)
	}
	s.waitOutput(v, "1 10")

	s.must("apply", hp1.uuid, hp2.uuid)
	s.waitOutput(v, "2 20")
	// HP003 replaces greet like HP001: refused without --force.
	if e := s.fails("apply", hp3.uuid); !strings.Contains(e, "conflict") || !strings.Contains(e, "HP001") {
		t.Fatalf("conflict: %s", e)
	}
	if st := s.status(hp3.uuid); st != "NOT-APPLIED" {
		t.Fatalf("HP003 after refused apply: %s", st)
	}
	s.must("apply", "--force", hp3.uuid)
	s.waitOutput(v, "3 20")
	// Last in, first out.
	if e := s.fails("deactive", hp1.uuid); !strings.Contains(e, "deactivate victim-1.0-1/HP003-1-1/victim first") {
		t.Fatalf("LIFO: %s", e)
	}
	s.waitOutput(v, "3 20")
	s.must("deactive", hp3.uuid)
	s.waitOutput(v, "2 20")
	s.must("remove", hp1.uuid, hp2.uuid, hp3.uuid)
	s.waitOutput(v, "1 10")
}

func TestUnprivilegedDenied(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	v := s.startVictim()
	out, errOut, code := s.syscareAs("nobody", "list")
	if code != 0 || !strings.Contains(out, "NOT-APPLIED") {
		t.Fatalf("list as nobody: exit %d\n%s%s", code, out, errOut)
	}
	for _, cmd := range []string{"apply", "remove"} {
		_, errOut, code = s.syscareAs("nobody", cmd, hp1.uuid)
		if code == 0 || !strings.Contains(errOut, "access denied") {
			t.Fatalf("%s as nobody: exit %d: %s", cmd, code, errOut)
		}
	}
	if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
		t.Fatalf("state changed by a denied caller: %s", st)
	}
	s.waitOutput(v, "1 10")
	if _, err := os.Stat(filepath.Join(s.root, "var/lib/syscare/state.json")); err == nil {
		b, _ := os.ReadFile(filepath.Join(s.root, "var/lib/syscare/state.json"))
		if strings.Contains(string(b), hp1.entity) {
			t.Fatalf("state file changed by a denied caller:\n%s", b)
		}
	}
}

func TestKillAndReboot(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	s.install(hp2)
	v := s.startVictim()
	s.must("apply", hp1.uuid, hp2.uuid)
	s.must("accept", hp1.uuid)
	s.waitOutput(v, "2 20")

	// kill -9 of the helper: the next call activates a new one, which reads the state
	// back from the process and the state file.
	s.killHelper()
	if st := s.status(hp1.uuid); st != "ACCEPTED" {
		t.Fatalf("HP001 after kill -9: %s", st)
	}
	if st := s.status(hp2.uuid); st != "ACTIVED" {
		t.Fatalf("HP002 after kill -9: %s", st)
	}
	s.waitOutput(v, "2 20")
	// And it still knows how to take them out.
	s.must("deactive", hp2.uuid)
	s.waitOutput(v, "2 10")
	s.must("active", hp2.uuid)
	s.waitOutput(v, "2 20")

	// "Reboot": the helper and every process restart; only the accepted patch comes back.
	s.killHelper()
	v.stop()
	s.victims = nil
	v = s.startVictim() // unpatched: no helper runs
	if st := s.status(hp1.uuid); st != "ACCEPTED" {
		t.Fatalf("HP001 after reboot: %s", st)
	}
	if st := s.status(hp2.uuid); st != "NOT-APPLIED" {
		t.Fatalf("HP002 after reboot: %s", st)
	}
	s.waitOutput(v, "2 10")
}

func TestBrokenAndUninstalledTarget(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	other := patchSpec{uuid: "55555555-0000-4000-8000-000000000005", entity: "55555555-0000-4000-8000-0000000000e5",
		name: "HP005", object: "greet2", funcs: []string{"greet"}, version: "2.0"}
	s.install(other)
	broken := filepath.Join(s.root, "usr/lib/syscare/patches/66666666-0000-4000-8000-000000000006")
	os.MkdirAll(broken, 0o755)
	os.WriteFile(filepath.Join(broken, "patch.json"), []byte(`{"schema": 1, "uuid": `), 0o644)

	out, errOut, code := s.syscare("list")
	if code != 0 || !strings.Contains(out, "BROKEN") || !strings.Contains(errOut, "invalid patch metadata") ||
		!strings.Contains(out, "victim-1.0-1/HP001-1-1/victim") {
		t.Fatalf("list with a broken patch: exit %d\n%s%s", code, out, errOut)
	}
	if e := s.fails("apply", other.uuid); !strings.Contains(e, "victim-2.0-1.x86_64") || !strings.Contains(e, "installed: victim-1.0-1.x86_64") {
		t.Fatalf("apply for an uninstalled version: %s", e)
	}
	if st := s.status(other.uuid); st != "NOT-APPLIED" {
		t.Fatalf("refused patch is %s", st)
	}
	// A patch installed while the helper runs appears (inotify), as does a repaired one.
	s.install(hp2)
	os.RemoveAll(broken)
	waitFor(t, func() bool {
		o, _, _ := s.syscare("list")
		return strings.Contains(o, hp2.entity) && !strings.Contains(o, "BROKEN")
	})
}

func TestNewProcesses(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	s.must("apply", hp1.uuid)
	// 50 processes started after activation run patched code from their first call,
	// five at a time.
	const n, par = 50, 5
	errs := make(chan string, n)
	sem := make(chan struct{}, par)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			out, err := exec.Command(filepath.Join(s.root, "usr/bin/victim"), "once").Output()
			if err != nil || string(out) != "2 10\n" {
				errs <- fmt.Sprintf("%q %v", out, err)
				return
			}
			errs <- ""
		}()
	}
	bad := 0
	for i := 0; i < n; i++ {
		if e := <-errs; e != "" {
			bad++
			t.Errorf("new process: %s", e)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d new processes ran unpatched code", bad, n)
	}
	// After removal new processes run the original code again.
	s.must("remove", hp1.uuid)
	if out, _ := exec.Command(filepath.Join(s.root, "usr/bin/victim"), "once").Output(); string(out) != "1 10\n" {
		t.Fatalf("after remove: %q", out)
	}
}

// TestPolkitConsulted: with polkitd on the bus, a non-root caller is asked about through
// CheckAuthorization (and denied: this machine has no rule granting the action to nobody).
func TestPolkitConsulted(t *testing.T) {
	_, err := os.Stat("/usr/lib/polkit-1/polkitd")
	testenv.Require(t, err == nil, "polkitd is not installed")
	s := newSandbox(t, "polkit")
	s.install(hp1)
	_, errOut, code := s.syscareAs("nobody", "apply", hp1.uuid)
	if code == 0 || !strings.Contains(errOut, "access denied") || !strings.Contains(errOut, "polkit") ||
		strings.Contains(errOut, "polkit is not available") {
		t.Fatalf("apply as nobody with polkit: exit %d: %s", code, errOut)
	}
	if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
		t.Fatalf("state changed by a denied caller: %s", st)
	}
}

func TestSaveRestoreSignalIdle(t *testing.T) {
	s := newSandbox(t, "idle=1s")
	s.install(hp1)
	s.install(hp2)
	v := s.startVictim()

	conn, err := godbus.Connect(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.AddMatchSignal(godbus.WithMatchInterface(syscarebus.Interface), godbus.WithMatchMember(syscarebus.SignalStateChanged))
	sigs := make(chan *godbus.Signal, 64)
	conn.Signal(sigs)

	s.must("apply", hp1.uuid, hp2.uuid)
	s.must("accept", hp1.uuid)
	s.must("save")
	s.must("remove", hp1.uuid, hp2.uuid)
	s.waitOutput(v, "1 10")
	if out := s.must("restore", "--accepted"); !strings.Contains(out, "HP001-1-1/victim: ACCEPTED") || strings.Contains(out, "HP002") {
		t.Fatalf("restore --accepted: %q", out)
	}
	s.waitOutput(v, "2 10")
	s.must("restore")
	s.waitOutput(v, "2 20")

	// Every transition was signalled: apply (2 steps x 2), accept, remove (3 + 2 steps)...
	// The signals were sent before the calls returned, but reach this connection on their
	// own time: wait for the ones looked for (a quiet spell is no proof on a loaded machine).
	wants := []string{hp1.entity + " ACTIVED>ACCEPTED", hp1.entity + " DEACTIVED>NOT-APPLIED", hp2.entity + " DEACTIVED>ACTIVED"}
	seen := map[string]bool{}
	all := func() bool {
		for _, w := range wants {
			if !seen[w] {
				return false
			}
		}
		return true
	}
	for guard := time.After(hangGuard); !all(); {
		select {
		case sg := <-sigs:
			if len(sg.Body) == 4 {
				seen[fmt.Sprint(sg.Body[0], " ", sg.Body[2], ">", sg.Body[3])] = true
			}
		case <-guard:
			for _, want := range wants {
				if !seen[want] {
					t.Errorf("no StateChanged %s in %s; got %v", want, hangGuard, seen)
				}
			}
			t.FailNow()
		}
	}

	// With a user patch active the helper stays (it watches for new processes) past its
	// idle timeout; without one it exits.
	time.Sleep(2500 * time.Millisecond)
	if s.helperPid() == 0 {
		t.Fatal("helper exited while a user patch is active")
	}
	s.must("remove", hp1.uuid, hp2.uuid)
	waitForD(t, hangGuard, func() bool { return s.helperPid() == 0 })
	s.waitOutput(v, "1 10")
}

// TestPartialFailure: a process the helper cannot attach to (another tracer holds it)
// makes the activation fail as a whole: the error names the pid, the process that was
// patched is restored, the state stays NOT-APPLIED.
func TestPartialFailure(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	v := s.startVictim()
	traced := s.startTracedVictim()

	e := s.fails("apply", hp1.uuid)
	if !strings.Contains(e, fmt.Sprintf("pid %d", traced)) || !strings.Contains(e, "1 of 2 processes failed") {
		t.Fatalf("apply with one untraceable process: %s", e)
	}
	if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
		t.Fatalf("state after partial failure: %s", st)
	}
	s.waitOutput(v, "1 10")
}

// TestSandboxScript runs tests/sandbox: the command sees the scratch root, the private bus
// and the built binaries, the helper is activated, and everything is gone afterwards.
func TestSandboxScript(t *testing.T) {
	cmd := exec.Command(filepath.Join(fx.repo, "tests/sandbox"), "--", "sh", "-c",
		`echo "SANDBOX=$SANDBOX"; test -d "$SYSCARE_ROOT/usr/lib/syscare/patches" && test -n "$DBUS_SYSTEM_BUS_ADDRESS" && [ "$(command -v syscare)" = "$SANDBOX/bin/syscare" ] && syscare list`)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Uuid") {
		t.Fatalf("tests/sandbox: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if dir, ok := strings.CutPrefix(line, "SANDBOX="); ok {
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("sandbox %s left behind", dir)
			}
			return
		}
	}
	t.Errorf("no SANDBOX in output:\n%s", out)
}

// TestSharedLibrary: a patch of a shared library goes into the running process that loaded
// it and into a process that loads it later, before its first call.
func TestSharedLibrary(t *testing.T) {
	s := newSandbox(t)
	lib := patchSpec{uuid: "77777777-0000-4000-8000-000000000007", entity: "77777777-0000-4000-8000-0000000000e7",
		name: "HP007", object: "lgreet6", funcs: []string{"lgreet"}, target: "/usr/lib/libgreet.so"}
	s.install(lib)
	v := s.startProgram("usr/bin/victimlib", "5")
	s.must("apply", lib.uuid)
	s.waitOutput(v, "6")
	once := exec.Command(filepath.Join(s.root, "usr/bin/victimlib"), "once")
	once.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(s.root, "usr/lib"))
	if out, err := once.Output(); err != nil || string(out) != "6\n" {
		t.Fatalf("new process loading the library: %q %v", out, err)
	}
	s.must("remove", lib.uuid)
	s.waitOutput(v, "5")
}
