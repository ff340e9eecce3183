package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/internal/testpkg"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// The scmulti fixture (tests/fixtures/build/scmulti): scmulti-tool is linked by the
// spec's %install, straight into the buildroot, from tool.o that %build compiled. Before
// %install was captured, fix-tool.patch was refused ("shipped binaries could not be
// cross-checked": no recorded link made scmulti-tool), and fix-both.patch silently left
// out prog/main.c (its program is installed as scmulti, not under the build's name scm)
// and put the library's patch into a patch RPM requiring scmulti, not scmulti-libs.
// Now fix-tool builds a patch of scmulti-tool that works in the running, stripped tool,
// and fix-both builds one patch per binary package (the dnf end-to-end test in
// tests/dnf_e2e applies them).
func TestInstallLinksAndBinaryPackages(t *testing.T) {
	testenv.NeedRoot(t, "mount namespaces for the compiler capture and ptrace for the loader")
	pkg := testpkg.Build(t, "scmulti")
	fix := func(n string) string { return filepath.Join(testpkg.Fixture(t, "scmulti"), n) }
	build := func(name, patch string) (string, []*patchmeta.Patch, map[string]string) {
		t.Helper()
		out := t.TempDir()
		r := runBuilder(t, nil, "--patch-name", name, "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
			"--patch", fix(patch), "--output", out, "--jobs", "2")
		if r.code != 0 {
			t.Fatalf("syscare-build %s: exit %d\n%s\n%s", patch, r.code, r.stdout, r.stderr)
		}
		rpms, _ := filepath.Glob(filepath.Join(out, "*.x86_64.rpm"))
		var patches []*patchmeta.Patch
		dirs := map[string]string{}
		for _, rp := range rpms {
			x := t.TempDir()
			if err := rpmfile.Extract(context.Background(), rp, x, io.Discard); err != nil {
				t.Fatal(err)
			}
			d, _ := filepath.Glob(filepath.Join(x, "usr/lib/syscare/patches/*"))
			if len(d) != 1 {
				t.Fatalf("%s: patch directories %q", rp, d)
			}
			p, err := patchmeta.Load(d[0])
			if err != nil {
				t.Fatal(err)
			}
			patches = append(patches, p)
			dirs[p.Target.Name] = d[0]
		}
		return r.stdout, patches, dirs
	}

	t.Run("a program linked in %install", func(t *testing.T) {
		stdout, patches, dirs := build("IN1", "fix-tool.patch")
		if !strings.Contains(stdout, "/usr/bin/scmulti-tool: replaced tool_value;") {
			t.Errorf("stdout:\n%s", stdout)
		}
		if len(patches) != 1 || patches[0].Target.Name != "scmulti" || len(patches[0].Entities) != 1 ||
			patches[0].Entities[0].TargetPath != "/usr/bin/scmulti-tool" {
			t.Fatalf("patches %+v, want one of scmulti for /usr/bin/scmulti-tool", patches)
		}
		if loaderMissed != "" {
			t.Fatal(loaderMissed)
		}
		root := t.TempDir()
		for _, r := range []string{pkg.RPM, strings.Replace(pkg.RPM, "/scmulti-1.0", "/scmulti-libs-1.0", 1)} {
			if err := rpmfile.Extract(context.Background(), r, root, io.Discard); err != nil {
				t.Fatal(err)
			}
		}
		prodhost.Check(t, "", filepath.Join(root, "usr/bin/scmulti-tool"))
		cmd := exec.Command(filepath.Join(root, "usr/bin/scmulti-tool"))
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(root, "usr/lib64"))
		out := startLines(t, cmd)
		out.waitFor(t, "tool 100 10", lineWait)
		e := patches[0].Entities[0]
		args := []string{"--pid", fmt.Sprint(cmd.Process.Pid), "--uuid", e.UUID}
		if o, err := exec.Command(loader, append([]string{"patch", "--patch", filepath.Join(dirs["scmulti"], e.File)}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage patch: %v\n%s", err, o)
		}
		out.waitFor(t, "tool 200 10", lineWait)
	})

	t.Run("one patch per binary package", func(t *testing.T) {
		_, patches, _ := build("BP1", "fix-both.patch")
		got := map[string][]string{}
		for _, p := range patches {
			if p.Target.NEVRA() != p.Target.Name+"-1.0-1.x86_64" {
				t.Errorf("target %s", p.Target.NEVRA())
			}
			for _, e := range p.Entities {
				got[p.Target.Name] = append(got[p.Target.Name], e.TargetPath)
			}
		}
		for _, v := range got {
			slices.Sort(v)
		}
		if len(got) != 2 || strings.Join(got["scmulti"], " ") != "/usr/bin/scmulti /usr/bin/scmulti-tool" ||
			strings.Join(got["scmulti-libs"], " ") != "/usr/lib64/libscm.so.1" {
			t.Fatalf("entities by target package %v", got)
		}
	})
}
