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
	"time"

	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// {fmt} 9.1.0 as Debian 12 ships its source (fmtlib 9.1.0+ds1: upstream's tarball without
// the bundled documentation), built with CMake into the shared library libfmt.so.9.
var fmtOrig = &debsrc.Orig{Source: "fmtlib", File: "fmtlib_9.1.0+ds1.orig.tar.gz",
	SHA256: "84ce1c2d0be3a9863935137969dcec6970125caac032f82474640bfc81463583", Env: "SYSCARE_FMT_ORIG"}

const (
	fmtVersion = "9.1.0"
	fmtSO      = "libfmt.so.9.1.0"
	// The upstream fix of a template in include/fmt/core.h.
	fmtFix = "fill-brace.patch"
	// detail::parse_align<char, specs_checker<specs_handler<char>>&>, the instance
	// libfmt.so's detail::vformat_to<char> uses; a hidden weak function in a COMDAT group.
	parseAlignSym = "_ZN3fmt2v96detail11parse_alignIcRNS1_13specs_checkerINS1_13specs_handlerIcEEEEEEPKT_SA_SA_OT0_"
	fmtObject     = "build/CMakeFiles/fmt.dir/src/format.cc.o"
)

// One format string per probe line; fmtprobe formats 42 with it.
var fillBraceProbes = []struct{ format, broken, fixed string }{
	{"<{:}>", "error missing '}' in format string", "ok <42>"},
	{"[{:}^]", "error invalid type specifier", "ok [42^]"},
	{"{:*>5}", "ok ***42", "ok ***42"},
	{"<{}>", "ok <42>", "ok <42>"},
}

// TestUpstreamFmtE2E: {fmt} 9.1.0 from Debian's source package, a CMake C++ build with
// hidden visibility, is built into RPMs; a program linked against the shipped libfmt.so
// runs; syscare-build turns the upstream fix of the template detail::parse_align in the
// header core.h (fmtlib/fmt ecffca67, issue #3086) into a patch RPM, proving which object's
// copy of the instance the library kept; upatch-manage applies it to the library in the
// running program and removes it again.
func TestUpstreamFmtE2E(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	needBinaries(t)
	needTools(t, "cmake", "g++")
	pkgs := rpmbuildSpec(t, "fmt", "fmt.spec", fmtOrig.Get(t, aptDir()), "fmt-"+fmtVersion+".tar.gz", "fmt", fmtVersion)

	start := time.Now()
	out, rpm := syscareBuild(t, pkgs, "FMT001", filepath.Join("fmt", fmtFix),
		fmt.Sprintf("patch-fmt-%s-1-FMT001-1-1.x86_64.rpm", fmtVersion))
	t.Logf("syscare-build FMT001 (%s) in %.1fs:\n%s", fmtFix, time.Since(start).Seconds(), out)
	// Both objects include core.h, so both are rebuilt; the library kept format.cc.o's copy.
	for _, want := range []string{"build patched (2 of 3 objects rebuilt)", "Patch report for /usr/lib64/" + fmtSO,
		parseAlignSym + " (src/format.cc): code changed",
		"vague-linkage " + parseAlignSym + ": the binary kept the copy of " + fmtObject} {
		if !strings.Contains(out, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, out)
		}
	}
	dir, meta := patchDir(t, rpm)
	if len(meta.Entities) != 1 {
		t.Fatalf("entities %+v, want one for the library", meta.Entities)
	}
	e := meta.Entities[0]
	var funcs []string
	for _, f := range e.Functions {
		funcs = append(funcs, f.Name)
	}
	t.Logf("entity %s replaces %q", e.TargetPath, funcs)
	if e.TargetPath != "/usr/lib64/"+fmtSO || !slices.Contains(funcs, parseAlignSym) {
		t.Fatalf("entity %s replaces %q, want %s among them", e.TargetPath, funcs, parseAlignSym)
	}
	// Besides parse_align's instances, gcc may compile other templates of the translation
	// unit differently (README); all of them are fmt's own vague-linkage functions.
	for _, fn := range funcs {
		if !strings.HasPrefix(fn, "_ZN3fmt2v96detail") || !strings.Contains(out, "vague-linkage "+fn+": the binary kept the copy of "+fmtObject) {
			t.Errorf("replaced %s is not a template instance of fmt::detail kept from %s", fn, fmtObject)
		}
	}

	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkgs.rpm, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	libdir := filepath.Join(root, "usr/lib64")
	lib := filepath.Join(libdir, fmtSO)
	f, err := elfsafe.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := elfsafe.BuildID(f.File)
	f.Close()
	if hex.EncodeToString(id) != e.BuildID {
		t.Errorf("patch.json build-id %s, shipped library %x", e.BuildID, id)
	}
	// The replaced functions are hidden (not in .dynsym): the patch carries their offsets,
	// and the loader finds no symbol table here, as on a production host.
	prodhost.Check(t, "", lib)
	prog := filepath.Join(t.TempDir(), "fmtprobe")
	if out, err := exec.Command("g++", "-std=c++17", "-O2", "-o", prog, filepath.Join("fmt", "fmtprobe.cpp"),
		"-I"+filepath.Join(root, "usr/include"), "-L"+libdir, "-lfmt", "-Wl,-rpath,"+libdir).CombinedOutput(); err != nil {
		t.Fatalf("g++ fmtprobe.cpp: %v\n%s", err, out)
	}

	r := startLines(t, nil, prog)
	if banner := r.next(t, "the banner"); banner != "fmt 90100" {
		t.Fatalf("banner %q", banner)
	}
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", r.cmd.Process.Pid))
	if !strings.Contains(string(maps), lib) {
		t.Fatalf("fmtprobe does not map %s:\n%s", lib, maps)
	}
	check := func(when string, fixed bool) {
		t.Helper()
		for _, p := range fillBraceProbes {
			want := p.broken
			if fixed {
				want = p.fixed
			}
			r.expect(t, when, p.format, want)
		}
	}
	check("before the patch", false)

	pid := fmt.Sprint(r.cmd.Process.Pid)
	manage := func(args ...string) {
		t.Helper()
		start := time.Now()
		if out, err := exec.Command(loaderBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage %q: %v\n%s", args, err, out)
		} else {
			t.Logf("upatch-manage %s (%.0f ms): %s", args[0], float64(time.Since(start).Microseconds())/1000, strings.TrimSpace(string(out)))
		}
	}
	manage("patch", "--pid", pid, "--binary", lib, "--uuid", e.UUID, "--patch", filepath.Join(dir, e.File))
	check("FMT001 patched", true)
	manage("unpatch", "--pid", pid, "--binary", lib, "--uuid", e.UUID)
	check("FMT001 unpatched", false)
}
