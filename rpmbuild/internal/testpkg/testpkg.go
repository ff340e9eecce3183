// Package testpkg builds the builder's test packages (tests/fixtures/build/<name>) into
// real source, binary and -debuginfo RPMs at test time.
package testpkg

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// Root returns the repository root (the directory holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	d, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		p := filepath.Dir(d)
		if p == d {
			t.Fatal("go.mod not found above the test directory")
		}
		d = p
	}
}

// Fixture returns the directory of fixture name.
func Fixture(t testing.TB, name string) string {
	return filepath.Join(Root(t), "tests", "fixtures", "build", name)
}

// RPMs are the packages built from a fixture.
type RPMs struct {
	Top       string // the rpmbuild topdir
	Version   string
	SRPM      string
	RPM       string
	Debuginfo string
}

var versionRe = regexp.MustCompile(`(?m)^Version:\s*(\S+)`)

// Build tars fixture name's src/ as <name>-<version>.tar.gz, builds its spec with
// rpmbuild -ba into a fresh topdir and returns the packages.
func Build(t testing.TB, name string) *RPMs { t.Helper(); return BuildWith(t, name) }

// BuildWith is Build with extra rpmbuild macro definitions ("dist .el9").
func BuildWith(t testing.TB, name string, defines ...string) *RPMs {
	t.Helper()
	fix := Fixture(t, name)
	spec, err := os.ReadFile(filepath.Join(fix, name+".spec"))
	if err != nil {
		t.Fatal(err)
	}
	m := versionRe.FindSubmatch(spec)
	if m == nil {
		t.Fatalf("%s.spec has no Version", name)
	}
	ver := string(m[1])
	top := t.TempDir()
	for _, d := range []string{"SOURCES", "SPECS"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	nv := name + "-" + ver
	tarCmd := exec.Command("tar", "-czf", filepath.Join(top, "SOURCES", nv+".tar.gz"),
		"--transform", "s,^src,"+nv+",", "src")
	tarCmd.Dir = fix
	if out, err := tarCmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	specPath := filepath.Join(top, "SPECS", name+".spec")
	if err := os.WriteFile(specPath, spec, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-ba", "--nodeps", "--define", "_topdir " + top}
	for _, d := range defines {
		args = append(args, "--define", d)
	}
	out, err := exec.Command("rpmbuild", append(args, specPath)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rpmbuild %s: %v\n%s", name, err, out)
	}
	find := func(pat string) string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(top, pat))
		if len(m) != 1 {
			t.Fatalf("%s: %d matches in %s", pat, len(m), top)
		}
		return m[0]
	}
	return &RPMs{Top: top, Version: ver,
		SRPM:      find("SRPMS/" + nv + "-*.src.rpm"),
		RPM:       find("RPMS/*/" + nv + "-*.rpm"),
		Debuginfo: find("RPMS/*/" + name + "-debuginfo-" + ver + "-*.rpm")}
}
