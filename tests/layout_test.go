package tests

import (
	"go/parser"
	"go/token"
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
	root := repoRoot(t)
	cmd := exec.Command("go", "list", "-f", "{{.Dir}}", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for name, pkg := range pkgs {
			documented := false
			for _, f := range pkg.Files {
				if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
					documented = true
				}
			}
			if !documented {
				rel, _ := filepath.Rel(root, dir)
				t.Errorf("package %s (%s) has no package doc comment", name, rel)
			}
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
