package browsertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus/testbus"
)

const polkitd = "/usr/lib/polkit-1/polkitd"

// grantNobody gives the unprivileged user nobody SysCare's action without authentication.
const grantNobody = `polkit.addRule(function(action, subject) {
    if (action.id == "org.openeuler.syscare.manage" && subject.user == "nobody") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
`

// startPolkit runs a real polkitd on the test's bus, so that the helper's answer to an
// unprivileged caller is polkit's. As in helper/e2e, polkitd runs in a private mount
// namespace where scratch directories are bound over its actions (SysCare's policy only)
// and rules directories: the host's are never written. It returns the rules directory;
// polkitd reloads the rules when a file appears there.
func (h *host) startPolkit() string {
	t := h.t
	actions := filepath.Join(h.dir, "polkit/actions")
	rules := filepath.Join(h.dir, "polkit/rules.d")
	for _, d := range []string{actions, rules} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const policyFile = "org.openeuler.syscare.policy"
	policy, err := os.ReadFile(filepath.Join(h.repo, "dbus", policyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(actions, policyFile), policy, 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("mount --bind %s /usr/share/polkit-1/actions && mount --bind %s /etc/polkit-1/rules.d && exec %s --no-debug",
		actions, rules, polkitd)
	cmd := exec.Command("/bin/sh", "-c", script)
	// Go makes the new mount namespace's mounts private, so the binds never reach the host.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+h.bus.Addr)
	log := &testbus.Log{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start polkitd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("polkitd log:\n%s", log)
		}
	})
	conn, err := godbus.Connect(h.bus.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var has bool
		if conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, "org.freedesktop.PolicyKit1").Store(&has) == nil && has {
			return rules
		}
		select {
		case <-exited:
			t.Fatalf("polkitd exited before owning its name:\n%s", log)
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("polkitd did not own org.freedesktop.PolicyKit1 in 10s:\n%s", log)
		}
	}
}
