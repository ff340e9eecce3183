package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/internal/testpkg"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv"
)

// The sccxx fixture (tests/fixtures/build/sccxx): a C++ program whose objects share the
// inline members of box.h. A changed member with a copy in two objects is replaced
// once, from the copy the binary kept, and works in the running program; a changed
// member inlined into a prebuilt object the build does not compile is refused, with
// the function, the header, the caller and the object named, and no RPM written.
func TestCxxInlineMembers(t *testing.T) {
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "mount namespaces for the compiler capture and ptrace for the loader")
	pkg := testpkg.Build(t, "sccxx")
	fix := func(n string) string { return filepath.Join(testpkg.Fixture(t, "sccxx"), n) }

	t.Run("inlined into a prebuilt object refused", func(t *testing.T) {
		out := t.TempDir()
		r := runBuilder(t, nil, "--patch-name", "CX2", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
			"--patch", fix("fix-area-FAIL.patch"), "--output", out, "--jobs", "2")
		if r.code != exitUnpatchable {
			t.Fatalf("exit %d, want %d\n%s\n%s", r.code, exitUnpatchable, r.stdout, r.stderr)
		}
		all := r.stdout + r.stderr
		for _, w := range []string{"_Z7area_ofi (", "area.h) is inlined into _Z11legacy_areai in legacy.o, which the patch does not cover (the recorded build did not compile it)"} {
			if !strings.Contains(all, w) {
				t.Errorf("output lacks %q:\n%s", w, all)
			}
		}
		if m, _ := filepath.Glob(filepath.Join(out, "*.rpm")); len(m) != 0 {
			t.Errorf("refused build wrote %q", m)
		}
	})

	out := t.TempDir()
	r := runBuilder(t, nil, "--patch-name", "CX1", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fix("fix-scaled.patch"), "--output", out, "--jobs", "2")
	if r.code != 0 {
		t.Fatalf("syscare-build: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Log(r.stdout)
	const scaled = "_ZNK3Box6scaledEv"
	for _, w := range []string{"vague-linkage " + scaled + ": the binary kept the copy of shape.o", "copies in shape.o, report.o",
		"/usr/bin/sccxx: replaced " + scaled + ";"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout lacks %q", w)
		}
	}
	x := t.TempDir()
	if err := rpmfile.Extract(context.Background(), filepath.Join(out, "patch-sccxx-1.0-1-CX1-1-1.x86_64.rpm"), x, io.Discard); err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(x, "usr/lib/syscare/patches/*"))
	if len(dirs) != 1 {
		t.Fatalf("patch directories %q", dirs)
	}
	p, err := patchmeta.Load(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if e := p.Entities; len(e) != 1 || len(e[0].Functions) != 1 || e[0].Functions[0].Name != scaled {
		t.Fatalf("entities %+v, want one replacing %s once", e, scaled)
	}
	e := p.Entities[0]

	if loaderMissed != "" {
		t.Fatal(loaderMissed)
	}
	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkg.RPM, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "usr/bin/sccxx"))
	lines := startLines(t, cmd)
	lines.waitFor(t, "cxx 100 35 26", lineWait)
	args := []string{"--pid", fmt.Sprint(cmd.Process.Pid), "--uuid", e.UUID}
	if o, err := exec.Command(loader, append([]string{"patch", "--patch", filepath.Join(dirs[0], e.File)}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("upatch-manage patch: %v\n%s", err, o)
	}
	lines.waitFor(t, "cxx 150 40 26", lineWait)
	if o, err := exec.Command(loader, append([]string{"unpatch"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("upatch-manage unpatch: %v\n%s", err, o)
	}
	lines.waitFor(t, "cxx 100 35 26", lineWait)
}
