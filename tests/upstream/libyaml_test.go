package upstream

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// libyaml 0.2.5 as Debian 12 ships its source: a git export without configure, so the
// spec runs autoreconf, configure and make, which compiles through libtool (.lo, .libs/*.o)
// and links the shared library libyaml-0.so.2 with gcc -shared.
var libyamlOrig = &debsrc.Orig{Source: "libyaml", File: "libyaml_0.2.5.orig.tar.gz",
	SHA256: "fa240dbf262be053f3898006d502d514936c818e422afdcf33921c63bed9bf2e", Env: "SYSCARE_LIBYAML_ORIG"}

const (
	libyamlVersion = "0.2.5"
	libyamlSO      = "libyaml-0.so.2.0.9"
	libyamlFix     = "emitter-flow-end-state.patch"
)

// emitprobe's answers: after a failed write of "]" (or "}"), 0.2.5 keeps the state it
// should have popped (one saved state more than indents); the fix pops both.
const (
	seqBroken = "emit=0 error=6 state=6 states=1 indents=0"
	mapBroken = "emit=0 error=6 state=8 states=1 indents=0"
	seqFixed  = "emit=0 error=6 state=4 states=0 indents=0"
	mapFixed  = seqFixed
	okLine    = "[a, b] "
)

// TestUpstreamLibyamlE2E: libyaml 0.2.5 from Debian's source package, an autotools and
// libtool build, is built into RPMs; a program linked against the shipped shared library
// runs; syscare-build turns the upstream emitter fix (CVE-2024-3205) into a patch RPM whose
// one entity targets the library; upatch-manage applies it to the library mapped in the
// running program (--binary) and removes it again.
func TestUpstreamLibyamlE2E(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	needBinaries(t)
	needTools(t, "autoreconf", "automake", "libtoolize")
	pkgs := rpmbuildSpec(t, "libyaml", "libyaml.spec", libyamlOrig.Get(t, aptDir()), "libyaml-"+libyamlVersion+".tar.gz", "libyaml", libyamlVersion)

	out, rpm := syscareBuild(t, pkgs, "YAML001", filepath.Join("libyaml", libyamlFix),
		fmt.Sprintf("patch-libyaml-%s-1-YAML001-1-1.x86_64.rpm", libyamlVersion))
	for _, want := range []string{"build patched (1 of ", "yaml_emitter_emit_flow_sequence_item (src/emitter.c)",
		"yaml_emitter_emit_flow_mapping_key (src/emitter.c)", "Patch report for /usr/lib64/" + libyamlSO} {
		if !strings.Contains(out, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("syscare-build:\n%s", out)
	dir, meta := patchDir(t, rpm)
	if len(meta.Entities) != 1 {
		t.Fatalf("entities %+v, want one for the library", meta.Entities)
	}
	e := meta.Entities[0]
	var funcs []string
	for _, f := range e.Functions {
		funcs = append(funcs, f.Name)
	}
	slices.Sort(funcs)
	if e.TargetPath != "/usr/lib64/"+libyamlSO ||
		!slices.Equal(funcs, []string{"yaml_emitter_emit_flow_mapping_key", "yaml_emitter_emit_flow_sequence_item"}) {
		t.Fatalf("entity %s replaces %q", e.TargetPath, funcs)
	}

	// The shipped library, installed under a root, and a program linked against it.
	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkgs.rpm, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(root, "usr/lib64", libyamlSO)
	f, err := elfsafe.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := elfsafe.BuildID(f.File)
	f.Close()
	if hex.EncodeToString(id) != e.BuildID {
		t.Errorf("patch.json build-id %s, shipped library %x", e.BuildID, id)
	}
	// The replaced functions are static: the patch carries their offsets, and the loader
	// finds no symbol table here, as on a production host.
	prodhost.Check(t, "", lib)
	prog := filepath.Join(t.TempDir(), "emitprobe")
	libdir := filepath.Join(root, "usr/lib64")
	if out, err := exec.Command("gcc", "-O2", "-o", prog, filepath.Join("libyaml", "emitprobe.c"),
		"-I"+filepath.Join(root, "usr/include"), "-L"+libdir, "-lyaml", "-Wl,-rpath,"+libdir).CombinedOutput(); err != nil {
		t.Fatalf("gcc emitprobe.c: %v\n%s", err, out)
	}

	r := startLines(t, nil, prog)
	if banner := r.next(t, "the banner"); banner != "libyaml "+libyamlVersion {
		t.Fatalf("banner %q", banner)
	}
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", r.cmd.Process.Pid))
	if !strings.Contains(string(maps), lib) {
		t.Fatalf("emitprobe does not map %s:\n%s", lib, maps)
	}
	r.expect(t, "before the patch", "seq", seqBroken)
	r.expect(t, "before the patch", "map", mapBroken)
	r.expect(t, "before the patch", "ok", okLine)

	pid := fmt.Sprint(r.cmd.Process.Pid)
	manage := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(loaderBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage %q: %v\n%s", args, err, out)
		} else {
			t.Logf("upatch-manage %s: %s", args[0], strings.TrimSpace(string(out)))
		}
	}
	manage("patch", "--pid", pid, "--binary", lib, "--uuid", e.UUID, "--patch", filepath.Join(dir, e.File))
	r.expect(t, "patched", "seq", seqFixed)
	r.expect(t, "patched", "map", mapFixed)
	r.expect(t, "patched", "ok", okLine)
	info, _ := exec.Command(loaderBin, "info", "--pid", pid).CombinedOutput()
	if !strings.Contains(string(info), e.UUID) {
		t.Errorf("upatch-manage info lacks %s:\n%s", e.UUID, info)
	}

	manage("unpatch", "--pid", pid, "--binary", lib, "--uuid", e.UUID)
	r.expect(t, "unpatched", "seq", seqBroken)
	r.expect(t, "unpatched", "map", mapBroken)
	r.expect(t, "unpatched", "ok", okLine)
}
