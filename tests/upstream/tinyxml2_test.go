package upstream

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// TinyXML-2 9.0.0 as Debian 12 ships its source, built with CMake (which calls the
// compiler by absolute path, /usr/bin/c++) into the shared library libtinyxml2.so.9.
var tinyxml2Orig = &debsrc.Orig{Source: "tinyxml2", File: "tinyxml2_9.0.0+dfsg.orig.tar.xz",
	SHA256: "96510f47a5db537f70dff3e83dd71fd2180cbba4aa76c589a549467e7f34bc9b", Env: "SYSCARE_TINYXML2_ORIG"}

const (
	tinyxml2Version = "9.0.0"
	tinyxml2SO      = "libtinyxml2.so.9.0.0"
	tinyxml2Fix     = "charref-overflow.patch"
	// The fixed function: a static member function of class tinyxml2::XMLUtil.
	charRefSym = "_ZN8tinyxml27XMLUtil15GetCharacterRefEPKcPcPi"
)

// One document per probe line; refprobe prints the root element's text.
var charRefProbes = []struct{ doc, broken, fixed string }{
	{"<r>&#x100000041;</r>", "text A", "text &#x100000041;"},
	{"<r>&#4294967361;</r>", "text ", "text &#4294967361;"},
	{"<r>&#x41;&#955;</r>", "text A\u03bb", "text A\u03bb"},
}

// The second fix changes an in-class virtual member, a function of vague linkage.
const (
	tinyxml2InlineFix = "xmlspace-preserve.patch"
	compactModeSym    = "_ZN8tinyxml210XMLPrinter11CompactModeERKNS_10XMLElementE"
)

var xmlSpaceProbes = []struct{ doc, broken, fixed string }{
	{`print <r xml:space="preserve"><a>x</a></r>`, `xml <r xml:space="preserve">|    <a>x</a>|</r>|`, `xml <r xml:space="preserve"><a>x</a></r>`},
	{`print <r><a>x</a></r>`, `xml <r>|    <a>x</a>|</r>|`, `xml <r>|    <a>x</a>|</r>|`},
}

// TestUpstreamTinyxml2E2E: TinyXML-2 9.0.0 from Debian's source package, a CMake C++
// build, is built into RPMs; a C++ program linked against the shipped library runs;
// syscare-build turns two fixes into patch RPMs: the upstream character-reference
// overflow fix (CVE-2024-50615), replacing the member function XMLUtil::GetCharacterRef,
// and a change of the in-class virtual member XMLPrinter::CompactMode in tinyxml2.h
// (a COMDAT function, inlined speculatively into two callers); upatch-manage applies
// each to the library in the running program and removes it again.
func TestUpstreamTinyxml2E2E(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	needBinaries(t)
	needTools(t, "cmake", "g++")
	pkgs := rpmbuildSpec(t, "tinyxml2", "tinyxml2.spec", tinyxml2Orig.Get(t, aptDir()), "tinyxml2-"+tinyxml2Version+".tar.xz", "tinyxml2", tinyxml2Version)

	start := time.Now()
	out, rpm := syscareBuild(t, pkgs, "TXML001", filepath.Join("tinyxml2", tinyxml2Fix),
		fmt.Sprintf("patch-tinyxml2-%s-1-TXML001-1-1.x86_64.rpm", tinyxml2Version))
	t.Logf("syscare-build TXML001 (%s) in %.1fs:\n%s", tinyxml2Fix, time.Since(start).Seconds(), out)
	for _, want := range []string{"build patched (1 of ", charRefSym + " (tinyxml2.cpp)", "Patch report for /usr/lib64/" + tinyxml2SO} {
		if !strings.Contains(out, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, out)
		}
	}
	dir, meta := patchDir(t, rpm)
	charRef := tinyxml2Entity(t, meta, charRefSym)

	start = time.Now()
	out, rpm = syscareBuild(t, pkgs, "TXML002", filepath.Join("tinyxml2", tinyxml2InlineFix),
		fmt.Sprintf("patch-tinyxml2-%s-1-TXML002-1-1.x86_64.rpm", tinyxml2Version))
	t.Logf("syscare-build TXML002 (%s) in %.1fs:\n%s", tinyxml2InlineFix, time.Since(start).Seconds(), out)
	for _, want := range []string{"build patched (1 of ", compactModeSym + " (tinyxml2.cpp)", "vague-linkage " + compactModeSym} {
		if !strings.Contains(out, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, out)
		}
	}
	dir2, meta2 := patchDir(t, rpm)
	compact := tinyxml2Entity(t, meta2, compactModeSym,
		"_ZN8tinyxml210XMLPrinter10VisitEnterERKNS_10XMLElementEPKNS_12XMLAttributeE",
		"_ZN8tinyxml210XMLPrinter9VisitExitERKNS_10XMLElementE")

	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkgs.rpm, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	libdir := filepath.Join(root, "usr/lib64")
	lib := filepath.Join(libdir, tinyxml2SO)
	f, err := elfsafe.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := elfsafe.BuildID(f.File)
	f.Close()
	for _, e := range []patchmeta.Entity{charRef, compact} {
		if hex.EncodeToString(id) != e.BuildID {
			t.Errorf("patch.json build-id %s, shipped library %x", e.BuildID, id)
		}
	}
	// XMLUtil is an exported class, so the function is in .dynsym; the debug file is
	// installed all the same, as a machine that takes patches has it.
	prodhost.Check(t, "", lib)
	prog := filepath.Join(t.TempDir(), "refprobe")
	if out, err := exec.Command("g++", "-O2", "-o", prog, filepath.Join("tinyxml2", "refprobe.cpp"),
		"-I"+filepath.Join(root, "usr/include"), "-L"+libdir, "-ltinyxml2", "-Wl,-rpath,"+libdir).CombinedOutput(); err != nil {
		t.Fatalf("g++ refprobe.cpp: %v\n%s", err, out)
	}

	r := startLines(t, nil, prog)
	if banner := r.next(t, "the banner"); banner != "tinyxml2 "+tinyxml2Version {
		t.Fatalf("banner %q", banner)
	}
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", r.cmd.Process.Pid))
	if !strings.Contains(string(maps), lib) {
		t.Fatalf("refprobe does not map %s:\n%s", lib, maps)
	}
	checkRefs := func(when string, fixed bool) {
		t.Helper()
		for _, p := range charRefProbes {
			want := p.broken
			if fixed {
				want = p.fixed
			}
			r.expect(t, when, p.doc, want)
		}
	}
	checkSpace := func(when string, fixed bool) {
		t.Helper()
		for _, p := range xmlSpaceProbes {
			want := p.broken
			if fixed {
				want = p.fixed
			}
			r.expect(t, when, p.doc, want)
		}
	}
	checkRefs("before the patch", false)
	checkSpace("before the patch", false)

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
	manage("patch", "--pid", pid, "--binary", lib, "--uuid", charRef.UUID, "--patch", filepath.Join(dir, charRef.File))
	checkRefs("TXML001 patched", true)
	checkSpace("TXML001 patched", false)
	manage("unpatch", "--pid", pid, "--binary", lib, "--uuid", charRef.UUID)
	checkRefs("TXML001 unpatched", false)

	manage("patch", "--pid", pid, "--binary", lib, "--uuid", compact.UUID, "--patch", filepath.Join(dir2, compact.File))
	checkSpace("TXML002 patched", true)
	checkRefs("TXML002 patched", false)
	manage("unpatch", "--pid", pid, "--binary", lib, "--uuid", compact.UUID)
	checkSpace("TXML002 unpatched", false)
}

// tinyxml2Entity returns the patch's one entity, for the library, after checking that
// it replaces exactly the functions want.
func tinyxml2Entity(t *testing.T, meta *patchmeta.Patch, want ...string) patchmeta.Entity {
	t.Helper()
	if len(meta.Entities) != 1 {
		t.Fatalf("entities %+v, want one for the library", meta.Entities)
	}
	e := meta.Entities[0]
	var got []string
	for _, f := range e.Functions {
		got = append(got, f.Name)
	}
	sort.Strings(got)
	sort.Strings(want)
	if e.TargetPath != "/usr/lib64/"+tinyxml2SO || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("entity %s replaces %q, want %q", e.TargetPath, got, want)
	}
	return e
}
