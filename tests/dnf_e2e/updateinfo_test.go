package dnfe2e

import (
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// TestHotUpdateinfo: `dnf hot-updateinfo list` (openEuler's command) shows the
// repository's hot-patch advisory with its severity, type, base package/hot patch and
// status, `list cves` one line per CVE, and the status follows the installed patch;
// plain `dnf updateinfo list/info` shows it too, as available, then as installed.
func TestHotUpdateinfo(t *testing.T) {
	testenv.NeedE2E(t) // about 2 minutes: packages, a repository, dnf runs
	e := setup(t)
	hp1 := e.buildPatch("HP001", "greet2", false)
	e.syscare("repo", "add", e.repo, hp1, "--advisory", "SA-2024-0001", "--cve", "CVE-2024-0001", "--severity", "Important")
	e.mustDNF("-q", "install", "victim-1.0-1", "syscare")

	out := e.mustDNF("-q", "hot-updateinfo", "list")
	t.Logf("dnf hot-updateinfo list:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "ADVISORY SEVERITY BASE-PKG/HOTPATCH STATUS" ||
		strings.Join(strings.Fields(lines[1]), " ") != "SA-2024-0001 Important/Sec. victim-1.0-1/HP001-1-1 AVAILABLE" {
		t.Fatalf("dnf hot-updateinfo list:\n%s", out)
	}
	out = e.mustDNF("-q", "hot-updateinfo", "list", "cves")
	if !strings.Contains(strings.Join(strings.Fields(out), " "), "CVE-2024-0001 Important/Sec. victim-1.0-1/HP001-1-1 AVAILABLE") {
		t.Errorf("dnf hot-updateinfo list cves:\n%s", out)
	}
	// Plain `dnf updateinfo` shows the hot patch the repository offers for the installed
	// target (hotupdateinfo.py extends it), marked not installed, filters applied.
	nevra := "patch-victim-1.0-1-HP001-1-1.x86_64"
	out = e.mustDNF("-q", "updateinfo", "list")
	t.Logf("dnf updateinfo list:\n%s", out)
	if f := strings.Join(strings.Fields(out), " "); !strings.Contains(f, "SA-2024-0001 Important/Sec. "+nevra) {
		t.Errorf("dnf updateinfo list does not offer the hot patch:\n%s", out)
	}
	if out := e.mustDNF("-q", "updateinfo", "list", "--cve", "CVE-2024-0001"); !strings.Contains(out, nevra) {
		t.Errorf("dnf updateinfo list --cve CVE-2024-0001:\n%s", out)
	}
	if out := e.mustDNF("-q", "updateinfo", "list", "--bugfix"); strings.Contains(out, nevra) {
		t.Errorf("dnf updateinfo list --bugfix shows a security advisory:\n%s", out)
	}
	// DNF's info names no packages: the advisory being there at all is the plugin's doing.
	if out := e.mustDNF("-q", "updateinfo", "info", "SA-2024-0001"); !strings.Contains(out, "Update ID: SA-2024-0001") ||
		!strings.Contains(out, "CVEs: CVE-2024-0001") {
		t.Errorf("dnf updateinfo info SA-2024-0001:\n%s", out)
	}
	e.mustDNF("hotpatch", "install", "--advisory", "SA-2024-0001")
	// Installed, it is DNF's own: listed with --installed, no more as available.
	if out := e.mustDNF("-q", "updateinfo", "list", "--installed"); !strings.Contains(out, nevra) {
		t.Errorf("dnf updateinfo list --installed after install:\n%s", out)
	}
	if out := e.mustDNF("-q", "updateinfo", "list"); strings.Contains(out, nevra) {
		t.Errorf("dnf updateinfo list still offers the installed hot patch:\n%s", out)
	}
	out = e.mustDNF("-q", "hot-updateinfo", "list")
	if !strings.Contains(strings.Join(strings.Fields(out), " "), "SA-2024-0001 Important/Sec. victim-1.0-1/HP001-1-1 ACTIVED") {
		t.Errorf("after install, dnf hot-updateinfo list:\n%s", out)
	}
	out = e.mustDNF("-q", "hot-updateinfo", "info", "CVE-2024-0001")
	if !strings.Contains(out, "SA-2024-0001") || !strings.Contains(out, "ACTIVED") {
		t.Errorf("dnf hot-updateinfo info CVE-2024-0001:\n%s", out)
	}
	if _, errOut, code := e.dnf("-q", "hot-updateinfo", "list", "bogus"); code == 0 || !strings.Contains(errOut, "only \"cves\"") {
		t.Errorf("list bogus: exit %d, %s", code, errOut)
	}
}
