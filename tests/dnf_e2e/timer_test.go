package dnfe2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
)

// timerCommand reads the command syscare-upgrade.service runs (what the timer starts).
func timerCommand(t *testing.T, repoDir string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoDir, "dbus/syscare-upgrade.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatal("syscare-upgrade.service has no ExecStart")
	return nil
}

// runTimer runs the service's command as the timer would, on the test's installroot:
// dnf's options that point it at the root, the repository and the plugin are added
// after the program name (they are where a real host has them).
func (e *env) runTimer(t *testing.T) (string, int) {
	t.Helper()
	argv := timerCommand(t, e.repoDir)
	if filepath.Base(argv[0]) != "dnf" {
		t.Fatalf("ExecStart runs %s, want dnf", argv[0])
	}
	out, errOut, code := e.dnf(argv[1:]...)
	return out + errOut, code
}

func (e *env) history(t *testing.T) []syscarebus.Record {
	t.Helper()
	var rs []syscarebus.Record
	out := run(t, e.dir, nil, filepath.Join(e.bin, "syscare"), "--bus", e.addr, "--json", "history")
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("history: %v\n%s", err, out)
	}
	return rs
}

func (e *env) writePolicy(t *testing.T, text string) {
	t.Helper()
	p := filepath.Join(e.root, "etc/syscare/upgrade.conf")
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeTimer: a patch published to the repository appears ACCEPTED on the host
// without anyone typing a command: the timer's command (syscare-upgrade.service's
// ExecStart) installs what the policy allows (an Important security fix, not a Low
// one), activates it in the running process, checks the service's health over the soak
// and accepts it; the helper logs one line and keeps the run for `syscare history`.
// Then: a run with nothing new does nothing and says so, a dry run tells what it would
// do and changes nothing, a run outside the maintenance window is skipped, and a broken
// policy is an error naming its line.
func TestUpgradeTimer(t *testing.T) {
	e := setup(t)
	hp1 := e.buildPatch("HP001", "greet2", false)
	hp2 := e.buildPatch("HP002", "greet3", false)
	e.mustDNF("-q", "install", "victim-1.0-1", "syscare")
	e.startVictim()
	pid := e.victim.cmd.Process.Pid
	e.writePolicy(t, fmt.Sprintf(`# test policy
[upgrade]
types = security
min_severity = important
accept = yes
soak = 1s
interval = 250ms

[package victim]
health = kill -0 %d
`, pid))

	// Published: the Important fix is for this host, the Low one is not (policy).
	e.syscare("repo", "add", e.repo, hp1, "--advisory", "SA-2026-0001", "--cve", "CVE-2026-0001", "--severity", "Important", "--type", "security")
	e.syscare("repo", "add", e.repo, hp2, "--advisory", "SA-2026-0002", "--cve", "CVE-2026-0002", "--severity", "Low", "--type", "security")

	start := time.Now()
	out, code := e.runTimer(t)
	if code != 0 {
		t.Fatalf("timer run: exit %d\n%s", code, out)
	}
	// What the run said and what the repository offers now, should the checks below
	// fail (a CI run once saw this run find nothing to install).
	t.Cleanup(func() {
		if t.Failed() {
			lst, lerr, code := e.dnf("hotpatch", "list", "--all")
			t.Logf("first timer run:\n%s\ndnf hotpatch list --all now (exit %d):\n%s%s", out, code, lst, lerr)
		}
	})
	e.waitOutput("2 10")
	if took := time.Since(start); took < time.Second {
		t.Errorf("the run took %s, less than the policy's soak", took)
	}
	rows := e.list("--installed")
	if rows["patch-victim-1.0-1-HP001"].State != "ACCEPTED" || e.installed("patch-victim-1.0-1-HP002") {
		t.Fatalf("after the timer run: %+v (HP002 installed: %v)\n%s", rows, e.installed("patch-victim-1.0-1-HP002"), out)
	}
	hist := e.history(t)
	if len(hist) != 1 || hist[0].Source != "policy" || hist[0].Result != syscarebus.RunOK ||
		!strings.Contains(hist[0].Summary, "1 applied (ACCEPTED; healthy: ") || !strings.Contains(hist[0].Summary, fmt.Sprintf("`kill -0 %d`", pid)) {
		t.Fatalf("history after the first run: %+v", hist)
	}
	if !strings.Contains(e.bus.Log.String(), "msg=\"upgrade run: 1 applied (ACCEPTED; healthy: ") {
		t.Errorf("no one-line summary in the helper's log")
	}

	// Nothing new: nothing installed or changed, and the run is recorded.
	if out, code := e.runTimer(t); code != 0 {
		t.Fatalf("second run: exit %d\n%s", code, out)
	}
	if hist = e.history(t); len(hist) != 2 || hist[1].Result != syscarebus.RunNothing {
		t.Fatalf("history after a run with nothing to do: %+v", hist)
	}

	// A dry run says what it would do and does nothing.
	e.writePolicy(t, "[upgrade]\nmin_severity = low\naccept = no\nhealth = true\nsoak = 2s\n")
	out = e.mustDNF("hotpatch", "upgrade", "--policy", "--dry-run")
	if !strings.Contains(out, "dry run: would install and activate patch-victim-1.0-1-HP002 (SA-2026-0002, Low, CVE-2026-0002) for victim-1.0-1; health: true over 2s; then ACTIVED") {
		t.Fatalf("dry run:\n%s", out)
	}
	e.waitOutput("2 10")
	if e.installed("patch-victim-1.0-1-HP002") || len(e.history(t)) != 2 {
		t.Fatal("the dry run changed something")
	}

	// Outside the maintenance window: skipped, with the window named.
	now := time.Now()
	closed := fmt.Sprintf("%02d:00-%02d:30", (now.Hour()+2)%24, (now.Hour()+2)%24)
	e.writePolicy(t, "[upgrade]\nmin_severity = low\nwindow = "+closed+"\n")
	if out, code := e.runTimer(t); code != 0 {
		t.Fatalf("run outside the window: exit %d\n%s", code, out)
	}
	e.waitOutput("2 10")
	hist = e.history(t)
	if e.installed("patch-victim-1.0-1-HP002") || len(hist) != 3 || hist[2].Result != syscarebus.RunSkipped ||
		!strings.Contains(hist[2].Summary, "outside the maintenance window ("+closed+")") {
		t.Fatalf("run outside the window: installed %v, history %+v", e.installed("patch-victim-1.0-1-HP002"), hist)
	}

	// A broken policy: an error naming the line, nothing done.
	e.writePolicy(t, "[upgrade]\n\nmin_severity = urgent\n")
	out, code = e.runTimer(t)
	if code == 0 || !strings.Contains(out, "upgrade.conf:3: min_severity \"urgent\"") {
		t.Fatalf("broken policy: exit %d\n%s", code, out)
	}
	e.waitOutput("2 10")
	if e.installed("patch-victim-1.0-1-HP002") {
		t.Fatal("a run with a broken policy installed something")
	}
}
