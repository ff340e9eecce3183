package builder

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
)

// installedCopies finds where %install put each linked file: under another name (a
// copy), stripped (by build-id), or linked straight into the buildroot; a linked file
// %install did not ship maps to nothing.
func TestInstalledCopies(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	src := filepath.Join(dir, "p.c")
	os.WriteFile(src, []byte("int main(void) { return V; }\n"), 0o644)
	link := func(out string, extra ...string) capture.Record {
		t.Helper()
		if o, err := exec.Command("gcc", append([]string{"-g", "-Wl,--build-id", "-o", out, src}, extra...)...).CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, o)
		}
		return capture.Record{Kind: capture.KindLink, Dir: dir, Output: out, Inputs: []string{src}}
	}
	copied := link(filepath.Join(dir, "scm"), "-DV=1")
	stripped := link(filepath.Join(dir, "small"), "-DV=2")
	inRoot := link(filepath.Join(root, "usr/bin/tool"), "-DV=3")
	unshipped := link(filepath.Join(dir, "test-prog"), "-DV=4")
	for _, c := range [][]string{
		{"cp", copied.Output, filepath.Join(root, "usr/bin/scmulti")},
		{"install", "-s", "-m", "0755", stripped.Output, filepath.Join(root, "usr/bin/small")},
	} {
		if o, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, o)
		}
	}
	os.WriteFile(filepath.Join(root, "usr/bin/script"), []byte("#!/bin/sh\n"), 0o755)
	got, err := installedCopies([]capture.Record{copied, stripped, inRoot, unshipped}, root)
	if err != nil {
		t.Fatal(err)
	}
	for out, want := range map[string]string{copied.Output: "/usr/bin/scmulti", stripped.Output: "/usr/bin/small", inRoot.Output: "/usr/bin/tool"} {
		if !slices.Equal(got[out], []string{want}) {
			t.Errorf("%s installed as %q, want %s", out, got[out], want)
		}
	}
	if p, ok := got[unshipped.Output]; ok {
		t.Errorf("an unshipped link output maps to %q", p)
	}
}

// A program shipped under several names (copies of one file) is patched as the copy
// of its own name, whatever the order of the installed paths; a renamed copy is found
// by content; a file no copy of which was found goes by its name.
func TestShippedAsPrefersOwnName(t *testing.T) {
	b := &build{index: &debuginfo.Index{Targets: []debuginfo.Target{
		{Path: "/usr/bin/redis-check-aof"}, {Path: "/usr/bin/redis-server"}, {Path: "/usr/bin/scmulti"}, {Path: "/usr/bin/tool"}}},
		installedAs: map[string][]string{
			"/b/src/redis-server": {"/usr/bin/redis-check-aof", "/usr/bin/redis-sentinel", "/usr/bin/redis-server"},
			"/b/prog/scm":         {"/usr/bin/scmulti"},
		}}
	for out, want := range map[string]string{"/b/src/redis-server": "/usr/bin/redis-server",
		"/b/prog/scm": "/usr/bin/scmulti", "/b/tool": "/usr/bin/tool"} {
		tg, err := b.shippedAs(out)
		if err != nil || tg.Path != want {
			t.Errorf("%s: %v, %v; want %s", out, tg, err, want)
		}
	}
}
