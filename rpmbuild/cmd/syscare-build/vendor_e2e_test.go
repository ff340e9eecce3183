package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/rpmbuild/internal/testpkg"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// The scvend fixture (tests/fixtures/build/scvend): a server that links a vendored
// library its own makefile archives with `ar rc` and `ranlib`, by a relative path, and a
// client sharing one object with the server. Two fixes that syscare-build once got wrong
// (issue 18): a fix that reaches the server only through the archive was "no functional
// change" (exit 3); a fix adding a function to the shared object, called by the server
// only, failed on the client's empty patch object. Both must build a patch of the
// server alone, which then works in the running server.
func TestVendoredArchiveAndSharedObject(t *testing.T) {
	testenv.NeedRoot(t, "mount namespaces for the compiler capture and ptrace for the loader")
	pkg := testpkg.Build(t, "scvend")
	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkg.RPM, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	fix := func(n string) string { return filepath.Join(testpkg.Fixture(t, "scvend"), n) }
	type built struct {
		patch *patchmeta.Patch
		dir   string
	}
	build := func(name, patch, fn, newFn string) built {
		t.Helper()
		out := t.TempDir()
		r := runBuilder(t, nil, "--patch-name", name, "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
			"--patch", fix(patch), "--output", out, "--jobs", "2")
		if r.code != 0 {
			t.Fatalf("syscare-build %s: exit %d\n%s\n%s", patch, r.code, r.stdout, r.stderr)
		}
		t.Log(r.stdout)
		for _, w := range []string{
			"cross-check (2 shipped binaries",
			"Shipped binaries:",
			"  /usr/bin/scvend-server: replaced " + fn + "; new " + newFn + ";",
			"  /usr/bin/scvend-client: needs nothing replaced, no patch object;",
		} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%s: stdout lacks %q", patch, w)
			}
		}
		x := t.TempDir()
		if err := rpmfile.Extract(context.Background(), filepath.Join(out, fmt.Sprintf("patch-scvend-1.0-1-%s-1-1.x86_64.rpm", name)), x, io.Discard); err != nil {
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
		if e := p.Entities; len(e) != 1 || e[0].TargetPath != "/usr/bin/scvend-server" || len(e[0].Functions) != 1 || e[0].Functions[0].Name != fn {
			t.Fatalf("%s: entities %+v, want one for the server replacing %s", patch, e, fn)
		}
		data, err := os.ReadFile(filepath.Join(dirs[0], p.Report))
		if err != nil {
			t.Fatal(err)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(data, &elems); err != nil || len(elems) != 1 {
			t.Fatalf("report.json: %v, %d reports", err, len(elems))
		}
		rp, err := diff.ParseReport(elems[0])
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(strings.Join(rp.Notes, "\n"), "shipped /usr/bin/scvend-client: needs nothing replaced, no patch object") {
			t.Errorf("report.json notes %q", rp.Notes)
		}
		return built{p, dirs[0]}
	}
	vendored := build("AR1", "fix-mini.patch", "mini_parse", "-")
	shared := build("AR2", "fix-shared-new.patch", "serve", "shared_extra")

	if loaderMissed != "" {
		t.Fatal(loaderMissed)
	}
	prodhost.Check(t, "", filepath.Join(root, "usr/bin/scvend-server"))
	cmd := exec.Command(filepath.Join(root, "usr/bin/scvend-server"))
	out := startLines(t, cmd)
	out.waitFor(t, "server 25", lineWait)
	pid := fmt.Sprint(cmd.Process.Pid)
	for _, c := range []struct {
		b    built
		want string
	}{{vendored, "server 205"}, {shared, "server 5023"}} {
		e := c.b.patch.Entities[0]
		args := []string{"--pid", pid, "--uuid", e.UUID}
		if o, err := exec.Command(loader, append([]string{"patch", "--patch", filepath.Join(c.b.dir, e.File)}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage patch: %v\n%s", err, o)
		}
		out.waitFor(t, c.want, lineWait)
		if o, err := exec.Command(loader, append([]string{"unpatch"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage unpatch: %v\n%s", err, o)
		}
		out.waitFor(t, "server 25", lineWait)
	}
}
