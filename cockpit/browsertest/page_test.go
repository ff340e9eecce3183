package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/tests/testenv"
)

const nobody = 65534

// browserBinary finds Debian's headless Chromium, Fedora's, or a full Chromium.
func browserBinary() string {
	for _, b := range []string{"chromium-headless-shell", "/usr/lib64/chromium-browser/headless_shell", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(b); err == nil {
			return p
		}
	}
	return ""
}

// rowOf is the JS expression of the page's row of a patch, button the selector of one
// of its action buttons.
func rowOf(name string) string {
	return `document.querySelector('#host tr[data-patch-name="` + name + `"]')`
}

func button(name, action string) string {
	return `#host tr[data-patch-name="` + name + `"] button[data-action="` + action + `"]`
}

// row is the demo patch's row.
var row = rowOf("HP001")

// pageState is what the test reads back from the page after each step.
type pageState struct {
	Generation int
	State      string
	CVEs       string
	Processes  string
	Report     string
	Offers     string
	Alerts     []string
}

func readStateOf(name string) string {
	return `(() => { const r = ` + rowOf(name) + `; const q = s => r && r.querySelector(s) ? r.querySelector(s).textContent : "";
	return { Generation: +(document.body.dataset.generation || 0), State: r ? r.dataset.state : "",
		CVEs: q(".cves"), Processes: q(".processes"), Report: q(".report"),
		Offers: document.querySelector("#offers tbody").textContent,
		Alerts: [...document.querySelectorAll("#alerts .alert")].map(a => a.dataset.kind + ": " + a.textContent) }; })()`
}

var readState = readStateOf("HP001")

func state(t *testing.T, ctx context.Context, p *Page, name string) pageState {
	t.Helper()
	var s pageState
	if err := p.Eval(ctx, readStateOf(name), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPage runs the page in headless Chromium against Cockpit's real web service and
// bridge (Debian's cockpit-ws and cockpit-bridge), the real helper on a private bus and a
// running process carrying the demo patch: the page lists the patch with its CVE, report
// summary and the patched process; clicking Deactivate takes the patch out of the running
// process; a change made elsewhere (the CLI) reaches the page through StateChanged; an
// unprivileged session's click is refused by the helper and changes nothing; a session
// whose bus has no helper says so. Screenshots go to bin/cockpit-*.png.
func TestPage(t *testing.T) {
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "the helper patches processes with ptrace")
	testenv.Require(t, cockpitWSPath() != "", "cockpit-ws is not installed (make deps)")
	for _, c := range []string{"cockpit-bridge", "dbus-daemon", "rpmbuild", "createrepo_c", "gcc"} {
		_, err := exec.LookPath(c)
		testenv.Require(t, err == nil, c+" is not installed (make deps)")
	}
	chrome := browserBinary()
	testenv.Require(t, chrome != "", "chromium-headless-shell is not installed (make deps)")
	start := time.Now()

	h := newHost(t)
	v := h.startVictim()
	h.syscare("apply", hp1.uuid)
	v.wait(t, "2")
	t.Logf("host ready in %s", time.Since(start).Round(time.Millisecond))

	share := installPackage(t, h.repo, h.dir)
	admin := startCockpit(t, "root", h.dir, share, h.bus.Addr, 0)

	shots := filepath.Join(h.repo, "bin")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	chromeLog := &testbus.Log{}
	b, err := Launch(chrome, filepath.Join(h.dir, "chrome"), chromeLog)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("page console:\n%s\nchromium:\n%s", strings.Join(b.Console, "\n"), chromeLog)
		}
	})
	p, err := b.NewPage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shot := func(name string) {
		t.Helper()
		path := filepath.Join(shots, "cockpit-"+name+".png")
		if err := p.Screenshot(ctx, path); err != nil {
			t.Fatal(err)
		}
		fmt.Println("screenshot:", path)
	}
	wait := func(expr, what string) {
		t.Helper()
		if err := p.WaitTrue(ctx, 20*time.Second, expr, readState); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// The patched host as an administrator sees it.
	if err := p.Navigate(ctx, admin.URL); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(v.cmd.Process.Pid)
	wait(row+` && `+row+`.dataset.state === "ACTIVED" && document.querySelector("#offers tbody tr")`, "the page lists the applied patch")
	s := state(t, ctx, p, "HP001")
	for _, c := range []struct{ got, want, what string }{
		{s.CVEs, "CVE-2026-0001", "CVE of the installed patch (from its advisory)"},
		{s.Processes, pid + " victim patched", "the running process carrying the patch"},
		{s.Processes, "1 of 1 patched", "process count"},
		{s.Report, h.report, "report summary"},
		{s.Offers, "CVE-2026-0002", "the newer patch the repository offers"},
		{s.Offers, "patch-victim-1.0-1-HP002-1-1.x86_64", "the offered package"},
	} {
		if !strings.Contains(c.got, c.want) {
			t.Errorf("%s: %q lacks %q", c.what, c.got, c.want)
		}
	}
	if len(s.Alerts) != 0 {
		t.Errorf("alerts on a healthy host: %q", s.Alerts)
	}
	shot("patched")

	// Deactivate with a click: the running process runs the old code again.
	if err := p.Click(ctx, button("HP001", "deactive")); err != nil {
		t.Fatal(err)
	}
	v.wait(t, "1")
	wait(row+`.dataset.state === "DEACTIVED"`, "the state after the click")
	if got := h.status(hp1.entity); got != "DEACTIVED" {
		t.Errorf("helper's status after the click: %q", got)
	}
	s = state(t, ctx, p, "HP001")
	if !strings.Contains(s.Processes, "0 of 1 patched") {
		t.Errorf("processes after deactivation: %q", s.Processes)
	}
	shot("deactived")

	// A change made elsewhere reaches the open page by the StateChanged signal alone.
	gen := state(t, ctx, p, "HP001").Generation
	h.syscare("active", hp1.uuid)
	v.wait(t, "2")
	wait(row+`.dataset.state === "ACTIVED" && +document.body.dataset.generation > `+strconv.Itoa(gen), "the page after a change by the CLI")

	// The package manager installs the newer HP002 (its directory appears); after a
	// click on Refresh the page lists it, and "Upgrade all" supersedes HP001 with it in
	// the running process.
	h.installPatch(hp2)
	wait2 := func(expr, what string) {
		t.Helper()
		if err := p.WaitTrue(ctx, 20*time.Second, expr, readStateOf("HP002")); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for end := time.Now().Add(20 * time.Second); ; {
		if err := p.Click(ctx, "#refresh"); err != nil {
			t.Fatal(err)
		}
		if p.WaitTrue(ctx, 2*time.Second, rowOf("HP002")+` && `+rowOf("HP002")+`.dataset.state === "NOT-APPLIED"`, readState) == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("HP002 not listed after Refresh: %+v", state(t, ctx, p, "HP002"))
		}
	}
	if s := state(t, ctx, p, "HP002"); !strings.Contains(s.CVEs, "CVE-2026-0002") {
		t.Errorf("HP002's CVEs: %q", s.CVEs)
	}
	if err := p.Click(ctx, "#upgrade-all"); err != nil {
		t.Fatal(err)
	}
	v.wait(t, "3")
	wait2(rowOf("HP002")+`.dataset.state === "ACTIVED" && `+row+`.dataset.state === "NOT-APPLIED"`, "the states after Upgrade all")
	wait2(`document.querySelector('#alerts [data-kind="done"]')`, "Upgrade all's result")
	if s := state(t, ctx, p, "HP002"); !strings.Contains(strings.Join(s.Alerts, "\n"), "SUPERSEDED") {
		t.Errorf("Upgrade all's result does not say HP001 was superseded: %q", s.Alerts)
	}
	shot("upgraded")

	// An unprivileged session (nobody) sees the patch; polkit grants it nothing, so its
	// click is refused by the helper on polkit's answer: the state and the process stay.
	rules := h.startPolkit()
	user := startCockpit(t, "nobody", h.dir, share, h.bus.Addr, nobody)
	if err := p.Navigate(ctx, user.URL); err != nil {
		t.Fatal(err)
	}
	wait2(rowOf("HP002")+` && `+rowOf("HP002")+`.dataset.state === "ACTIVED"`, "the unprivileged page lists the patch")
	if err := p.Click(ctx, button("HP002", "deactive")); err != nil {
		t.Fatal(err)
	}
	wait2(`document.querySelector('#alerts [data-kind="denied"]')`, "the refusal shown to an unprivileged user")
	s = state(t, ctx, p, "HP002")
	alerts := strings.Join(s.Alerts, "\n")
	if s.State != "ACTIVED" || !strings.Contains(alerts, "You are not authorized") ||
		!strings.Contains(alerts, "is not authorized for org.openeuler.syscare.manage") {
		t.Errorf("unprivileged page after the refused click (want polkit's refusal): %+v", s)
	}
	v.wait(t, "3")
	if got := h.status(hp2.entity); got != "ACTIVED" {
		t.Errorf("helper's status after the refused click: %q", got)
	}
	shot("denied")

	// A polkit rule granting nobody the action: the same click now takes the patch out.
	if err := os.WriteFile(filepath.Join(rules, "50-syscare-cockpit.rules"), []byte(grantNobody), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := p.Click(ctx, button("HP002", "deactive")); err != nil {
			t.Fatal(err)
		}
		// polkitd reloads its rules on an inotify event, a moment after the write.
		if p.WaitTrue(ctx, 3*time.Second, `document.querySelector('#alerts [data-kind="done"]')`, readStateOf("HP002")) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nobody's click still refused with a granting rule: %+v", state(t, ctx, p, "HP002"))
		}
	}
	v.wait(t, "1")
	wait2(rowOf("HP002")+`.dataset.state === "DEACTIVED"`, "the state after nobody's granted click")
	if got := h.status(hp2.entity); got != "DEACTIVED" {
		t.Errorf("helper's status after nobody's granted click: %q", got)
	}

	// A host where the helper runs only on demand: the page's first call activates it
	// through the bus (the bridge does not need it running), and an empty host says so.
	empty := filepath.Join(h.dir, "emptyroot")
	if err := os.MkdirAll(filepath.Join(empty, "usr/lib/syscare/patches"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := run(h.dir, "rpm", "--root", empty, "--initdb"); err != nil {
		t.Fatal(err)
	}
	idleBus, err := testbus.Start(testbus.Options{RepoDir: h.repo, Dir: filepath.Join(h.dir, "idlebus"),
		HelperExec: h.bin + "/syscare-helper --root " + empty})
	if err != nil {
		t.Fatal(err)
	}
	defer idleBus.Close()
	if pid := idleBus.HelperPid(); pid != 0 {
		t.Fatalf("helper %d runs before the page asked", pid)
	}
	idle := startCockpit(t, "idle", h.dir, share, idleBus.Addr, 0)
	if err := p.Navigate(ctx, idle.URL); err != nil {
		t.Fatal(err)
	}
	wait(`+document.body.dataset.generation > 0 && !document.querySelector("#host-empty").hidden`, "the page of a host with no patch")
	if s := state(t, ctx, p, "HP001"); len(s.Alerts) != 0 {
		t.Errorf("alerts on an empty host: %q", s.Alerts)
	}
	if idleBus.HelperPid() == 0 {
		t.Error("the page's calls did not activate the helper")
	}

	// A bus where the helper cannot start: the page says that the helper is not reachable.
	brokenBus, err := testbus.Start(testbus.Options{RepoDir: h.repo, Dir: filepath.Join(h.dir, "brokenbus"), HelperExec: "/bin/false"})
	if err != nil {
		t.Fatal(err)
	}
	defer brokenBus.Close()
	gone := startCockpit(t, "nohelper", h.dir, share, brokenBus.Addr, 0)
	if err := p.Navigate(ctx, gone.URL); err != nil {
		t.Fatal(err)
	}
	wait(`document.querySelector('#alerts [data-kind="unreachable"]')`, "the message when the helper is not reachable")
	shot("unreachable")
	t.Logf("whole test %s", time.Since(start).Round(time.Millisecond))
}
