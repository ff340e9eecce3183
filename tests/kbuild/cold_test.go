package kbuild

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFirstBuildWithoutCache builds a kernel fix as a packager's first build does:
// no --kernel-cache, so the tree is unpacked by %prep and prepared in the build's own
// directory, then moved out of the %prep top that is removed. The other tests build
// from the shared prepared tree; this one found that the packaging step looked for the
// spec in that removed top. The patch's source RPM must carry the kernel's spec.
func TestFirstBuildWithoutCache(t *testing.T) {
	bin, args := loadavgBuild(t, "COLD")
	r := runBuild(t, bin, args...)
	if r.code != 0 || r.rpm == "" {
		t.Fatalf("first build without a cache: exit %d\n%s", r.code, r.out)
	}
	if !strings.Contains(r.out, "tree prepared") {
		t.Errorf("the build did not prepare its own tree:\n%s", r.out)
	}
	srpms, _ := filepath.Glob(filepath.Join(r.outDir, "patch-*.src.rpm"))
	if len(srpms) != 1 {
		t.Fatalf("source RPMs in %s: %q, want one", r.outDir, srpms)
	}
	out, err := exec.Command("rpm", "-qpl", srpms[0]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ".spec") || !strings.Contains(string(out), "loadavg.patch") {
		t.Errorf("rpm -qpl %s: %v, want the kernel's spec and the fix:\n%s", filepath.Base(srpms[0]), err, out)
	}
	t.Logf("first build without a cache took %v", r.took.Round(1e9))
}
