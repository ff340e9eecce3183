package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is the module root (this file lives in tests/).
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// TestEveryPackageHasADoc fails when a Go package has no package doc comment.
func TestEveryPackageHasADoc(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{if .GoFiles}}{{.ImportPath}}\t{{.Doc}}{{end}}", "./...")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, doc, _ := strings.Cut(line, "\t")
		if pkg != "" && strings.TrimSpace(doc) == "" {
			t.Errorf("package %s has no package doc comment", pkg)
		}
	}
}

// TestRuntimeHasNoPolicy holds the architecture's rule: runtime/ never imports helper/
// or rpmbuild/, and the syscare CLI never imports runtime/ (it talks to the helper only).
func TestRuntimeHasNoPolicy(t *testing.T) {
	const mod = "github.com/syscare/syscare/"
	root := repoRoot(t)
	deps := func(pkg string) []string {
		cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	for _, d := range deps("./runtime/...") {
		if strings.HasPrefix(d, mod+"helper") || strings.HasPrefix(d, mod+"rpmbuild") {
			t.Errorf("runtime depends on %s", d)
		}
	}
	for _, d := range deps("./helper/cmd/syscare") {
		if strings.HasPrefix(d, mod+"runtime/ptrace") || strings.HasPrefix(d, mod+"runtime/upatch") {
			t.Errorf("the syscare CLI depends on %s", d)
		}
	}
}
