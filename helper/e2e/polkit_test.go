package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/tests/testenv"
)

const polkitd = "/usr/lib/polkit-1/polkitd"

// grantNobody is a polkit rule giving the unprivileged user nobody the SysCare action
// without authentication.
const grantNobody = `polkit.addRule(function(action, subject) {
    if (action.id == "org.openeuler.syscare.manage" && subject.user == "nobody") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
`

// refuseNobody says no outright (no authentication would help).
const refuseNobody = `polkit.addRule(function(action, subject) {
    if (action.id == "org.openeuler.syscare.manage" && subject.user == "nobody") {
        return polkit.Result.NO;
    }
    return polkit.Result.NOT_HANDLED;
});
`

// grantDaemon grants the action to another unprivileged user: it must not cover nobody,
// which shows that polkit judges the real caller, not the helper or a fixed identity.
const grantDaemon = `polkit.addRule(function(action, subject) {
    if (action.id == "org.openeuler.syscare.manage" && subject.user == "daemon") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
`

// startPolkit runs a real polkitd on the sandbox's bus, as its system bus name. polkitd has
// no options for its directories, so it runs in a private mount namespace where a scratch
// directory holding only SysCare's action file is bound over /usr/share/polkit-1/actions
// and one holding rule (if not empty) over /etc/polkit-1/rules.d: the system's directories
// are never written.
func (s *sandbox) startPolkit(rule string) {
	s.t.Helper()
	actions := filepath.Join(s.dir, "polkit/actions")
	rules := filepath.Join(s.dir, "polkit/rules.d")
	for _, d := range []string{actions, rules} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			s.t.Fatal(err)
		}
	}
	const policyFile = "org.openeuler.syscare.policy"
	policy, err := os.ReadFile(filepath.Join(fx.repo, "dbus", policyFile))
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(actions, policyFile), policy, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if rule != "" {
		if err := os.WriteFile(filepath.Join(rules, "50-syscare-e2e.rules"), []byte(rule), 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
	script := fmt.Sprintf("mount --bind %s /usr/share/polkit-1/actions && mount --bind %s /etc/polkit-1/rules.d && exec %s",
		actions, rules, polkitd)
	cmd := exec.Command("/bin/sh", "-c", script)
	// Go makes the new mount namespace's mounts private, so the binds never reach the host.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.addr)
	log := &testbus.Log{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start polkitd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if s.t.Failed() {
			s.t.Logf("polkitd log:\n%s", log)
		}
	})

	conn, err := godbus.Connect(s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	// A hang guard: polkitd starts its JavaScript engine, slow on a loaded machine.
	for end := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var has bool
		if conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.freedesktop.PolicyKit1").Store(&has) == nil && has {
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("polkitd exited before owning its name:\n%s", log)
		default:
		}
		if time.Now().After(end) {
			s.t.Fatalf("polkitd did not own org.freedesktop.PolicyKit1 in a minute:\n%s", log)
		}
	}
}

// TestPolkitGrants: a real polkitd with a rule granting org.openeuler.syscare.manage to
// nobody lets nobody apply and remove a patch (the running process really changes); without
// the rule, with a rule saying NO, or with a rule for another user, nobody is denied by
// polkit's answer and nothing changes.
func TestPolkitGrants(t *testing.T) {
	_, err := os.Stat(polkitd)
	testenv.Require(t, err == nil, "polkitd is not installed")
	t.Run("granted", func(t *testing.T) {
		s := newSandbox(t)
		s.startPolkit(grantNobody)
		s.install(hp1)
		v := s.startVictim()
		if out, errOut, code := s.syscareAs("nobody", "apply", hp1.uuid); code != 0 {
			t.Fatalf("apply as nobody with a granting rule: exit %d\n%s%s", code, out, errOut)
		}
		s.waitOutput(v, "2 10")
		if st := s.status(hp1.uuid); st != "ACTIVED" {
			t.Fatalf("after apply by nobody: %s", st)
		}
		if out, errOut, code := s.syscareAs("nobody", "remove", hp1.uuid); code != 0 {
			t.Fatalf("remove as nobody with a granting rule: exit %d\n%s%s", code, out, errOut)
		}
		s.waitOutput(v, "1 10")
		if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
			t.Fatalf("after remove by nobody: %s", st)
		}
	})
	for _, c := range []struct{ name, rule string }{
		{"no-rule", ""},
		{"rule-no", refuseNobody},
		{"other-user", grantDaemon},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			s.startPolkit(c.rule)
			s.install(hp1)
			v := s.startVictim()
			_, errOut, code := s.syscareAs("nobody", "apply", hp1.uuid)
			// The denial must be polkit's answer, not a failed call or an absent polkitd.
			if code == 0 || !strings.Contains(errOut, "is not authorized for "+syscarebus.PolkitAction) {
				t.Fatalf("apply as nobody: exit %d: %s", code, errOut)
			}
			if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
				t.Fatalf("state changed by a denied caller: %s", st)
			}
			s.waitOutput(v, "1 10")
			// Root applies; nobody may not take it out either.
			s.must("apply", hp1.uuid)
			s.waitOutput(v, "2 10")
			_, errOut, code = s.syscareAs("nobody", "remove", hp1.uuid)
			if code == 0 || !strings.Contains(errOut, "is not authorized for "+syscarebus.PolkitAction) {
				t.Fatalf("remove as nobody: exit %d: %s", code, errOut)
			}
			if st := s.status(hp1.uuid); st != "ACTIVED" {
				t.Fatalf("state changed by a denied caller: %s", st)
			}
			s.waitOutput(v, "2 10")
		})
	}
}
