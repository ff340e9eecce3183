package dnfe2e

import (
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// TestHotUpdateinfo: `dnf hot-updateinfo list` (openEuler's command) shows the
// repository's hot-patch advisory with its severity, type, base package/hot patch and
// status, `list cves` one line per CVE, and the status follows the installed patch.
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
	e.mustDNF("hotpatch", "install", "--advisory", "SA-2024-0001")
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
