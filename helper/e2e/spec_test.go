package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSpecInstallsContractFiles parses syscare.spec with rpmspec and checks that every
// source file its %install copies exists in the tree (building the RPM takes minutes and
// is left to packagers; `rpmbuild -bb syscare.spec` works on this machine).
func TestSpecInstallsContractFiles(t *testing.T) {
	out, err := exec.Command("rpmspec", "-P", filepath.Join(fx.repo, "syscare.spec")).CombinedOutput()
	if err != nil {
		t.Fatalf("rpmspec: %v\n%s", err, out)
	}
	spec := string(out)
	re := regexp.MustCompile(`(?m)^install -D -m \d+ (\S+) `)
	srcs := re.FindAllStringSubmatch(spec, -1)
	if len(srcs) < 8 {
		t.Fatalf("only %d install lines in the expanded spec", len(srcs))
	}
	for _, m := range srcs {
		if strings.HasPrefix(m[1], "bin/") {
			continue
		}
		if _, err := os.Stat(filepath.Join(fx.repo, m[1])); err != nil {
			t.Errorf("spec installs %s: %v", m[1], err)
		}
	}
	for _, cmd := range []string{"helper/cmd/syscare ", "helper/cmd/syscare-helper "} {
		if !strings.Contains(spec, cmd) {
			t.Errorf("spec does not build %s", cmd)
		}
	}
}
