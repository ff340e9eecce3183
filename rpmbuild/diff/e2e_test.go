package diff

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/tests/testenv"
)

// e2eCase is a two-file program: main.c prints what lib.c computes, in a loop.
type e2eCase struct {
	main, orig, fixed string
	shared            bool     // lib.c goes into liblib.so (-fPIC), patched with --binary
	noPIE             bool     // a position-dependent executable (-no-pie)
	cxx               bool     // lib is C++ (lib.cc, g++)
	other             string   // a third file linked with lib (a vendored library, say)
	opt               string   // optimisation level of lib (default -O2)
	flags             []string // more flags for lib, as the builder's capture adds them
	changed           []string
	before, after     string // a line printed before and after the patch
}

// TestPatchRunningProcess builds two-file programs the way the builder does, diffs a
// fix of one file, and applies the emitted object to the running program with
// upatch-manage, then removes it again. As on a production host, the running binary
// is stripped and its debuginfo is nowhere the loader looks: the differ resolves the
// target's symbols from the separate debug file, and the patch carries their offsets.
func TestPatchRunningProcess(t *testing.T) {
	testenv.NeedRoot(t, "ptrace of a child")
	manage := filepath.Join(t.TempDir(), "upatch-manage")
	build := exec.Command("go", "build", "-o", manage, "github.com/syscare/syscare/runtime/cmd/upatch-manage")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build upatch-manage: %v\n%s", err, out)
	}
	loop := `#include <stdio.h>
#include <unistd.h>
int compute(int);
int main(void) {
	for (;;) { printf("%d\n", compute(2)); fflush(stdout); usleep(10000); }
}
`
	// The fix reaches a static function, a static variable, a function-static counter
	// (all through .upatch.syms aliases) and a changed static const table (a new copy).
	statics := e2eCase{main: loop,
		orig: `static int calls;
static const int tbl[4] = { 10, 20, 30, 40 };
static __attribute__((noipa)) int scale(int x) { return x * 3; }
__attribute__((noipa)) int compute(int x) {
	static int n;
	n++;
	calls++;
	return scale(x) + tbl[x & 3] - 36;
}
`,
		fixed: `static int calls;
static const int tbl[4] = { 10, 20, 31, 40 };
static __attribute__((noipa)) int scale(int x) { return x * 3; }
__attribute__((noipa)) int compute(int x) {
	static int n;
	n++;
	calls++;
	return scale(x) + tbl[x & 3] + 1000 + (n > 1 && calls > 1);
}
`,
		changed: []string{"compute"},
		// 6 + 31 + 1000 + 1: the new table, and the process's own counters (both > 1)
		before: "0", after: "1038"}
	// A changed static function inlined into two callers: both call paths change.
	inlined := e2eCase{main: `#include <stdio.h>
#include <unistd.h>
int path1(int), path2(int);
int main(void) {
	for (;;) { printf("%d %d\n", path1(1), path2(1)); fflush(stdout); usleep(10000); }
}
`,
		orig: `static inline int fee(int x) { return x + 1; }
__attribute__((noipa)) int path1(int x) { return fee(x) * 10; }
__attribute__((noipa)) int path2(int x) { return fee(x) * 100; }
`,
		fixed: `static inline int fee(int x) { return x + 5; }
__attribute__((noipa)) int path1(int x) { return fee(x) * 10; }
__attribute__((noipa)) int path2(int x) { return fee(x) * 100; }
`,
		changed: []string{"path1", "path2"},
		before:  "20 200", after: "60 600"}
	// A switch compiled to a jump table (anonymous read-only data with relocations into
	// the function) and a new string literal.
	table := e2eCase{main: `#include <stdio.h>
#include <unistd.h>
const char *name(int);
int main(void) {
	for (int i = 0;; i++) { printf("%s\n", name(i % 8 == 3 ? 3 : 9)); fflush(stdout); usleep(5000); }
}
`,
		orig: `__attribute__((noipa)) const char *name(int k) {
	switch (k) {
	case 0: return "zero"; case 1: return "one"; case 2: return "two"; case 3: return "three";
	case 4: return "four"; case 5: return "five"; case 6: return "six"; default: return "many";
	}
}
`,
		fixed: `__attribute__((noipa)) const char *name(int k) {
	switch (k) {
	case 0: return "zero"; case 1: return "one"; case 2: return "two"; case 3: return "THREE!";
	case 4: return "four"; case 5: return "five"; case 6: return "six"; case 7: return "seven";
	default: return "many";
	}
}
`,
		changed: []string{"name"},
		before:  "three", after: "THREE!"}
	shared := statics
	shared.shared = true
	noPIE := statics
	noPIE.noPIE = true
	// Names defined twice in the binary: a vendored file has its own static dictNext
	// and compute; the fix calls the global dictNext and replaces the global compute,
	// which a lookup by name on the host would find ambiguous.
	dup := e2eCase{main: loop,
		orig: `__attribute__((noipa)) int dictNext(int x) { return x + 1; }
__attribute__((noipa)) int compute(int x) { return x * 100; }
`,
		fixed: `__attribute__((noipa)) int dictNext(int x) { return x + 1; }
__attribute__((noipa)) int compute(int x) { return dictNext(x) * 1000; }
`,
		other: `static __attribute__((noipa)) int dictNext(int x) { return x - 1; }
static __attribute__((noipa)) int compute(int x) { return dictNext(x) * 7; }
int vendored(int x) { return compute(x); }
`,
		changed: []string{"compute"},
		before:  "200", after: "3000"}
	// C++: an out-of-line member function of a class in a namespace, reached through a
	// static object of the target.
	cxx := e2eCase{main: loop, cxx: true,
		orig: `namespace app {
struct Counter { int n = 0; int bump(int x); };
static Counter counter;
__attribute__((noipa)) int Counter::bump(int x) { n++; return x * 2; }
}
extern "C" __attribute__((noipa)) int compute(int x) { return app::counter.bump(x); }
`,
		fixed: `namespace app {
struct Counter { int n = 0; int bump(int x); };
static Counter counter;
__attribute__((noipa)) int Counter::bump(int x) { n++; return x * 2 + (n > 1 ? 500 : 0); }
}
extern "C" __attribute__((noipa)) int compute(int x) { return app::counter.bump(x); }
`,
		changed: []string{"_ZN3app7Counter4bumpEi"},
		before:  "4", after: "504"}
	// -O0 puts every string of the file into one .rodata, which a table in writable data
	// also points into: one changed message must not make the table look changed.
	strings0 := e2eCase{opt: "-O0", main: `#include <stdio.h>
#include <unistd.h>
const char *describe(int), *pick(int);
int main(void) {
	for (;;) { printf("%s %s\n", describe(1), pick(0)); fflush(stdout); usleep(10000); }
}
`,
		orig: `static const char *names[] = { "alpha", "beta" };
const char *describe(int i) { return i ? "seen" : "unseen"; }
const char *pick(int i) { return names[i & 1]; }
`,
		fixed: `static const char *names[] = { "alpha", "beta" };
const char *describe(int i) { return i ? "SEEN!" : "unseen"; }
const char *pick(int i) { return names[i & 1]; }
`,
		changed: []string{"describe"},
		before:  "seen alpha", after: "SEEN! alpha"}
	// The fix reads glibc's stderr, which the PIE program never used (it has no copy):
	// compiled as the builder's capture compiles, the read goes through the GOT.
	farData := e2eCase{main: loop, flags: []string{"-mno-direct-extern-access"},
		orig:    "#include <stdio.h>\n__attribute__((noipa)) int compute(int x) { return x > 1000 ? x / 7 : x * 100; }\n",
		fixed:   "#include <stdio.h>\n__attribute__((noipa)) int compute(int x) { return x > 1000 ? x / 7 : x * 100 + fileno(stderr); }\n",
		changed: []string{"compute"},
		before:  "200", after: "202"}
	// A shared library's own thread-local variables, a global one (general dynamic:
	// TLSGD) and a static one (local dynamic: TLSLD, DTPOFF32), reached through
	// __tls_get_addr with the library's module id as the process has it.
	libTLS := e2eCase{main: loop, shared: true,
		orig: `__thread int shared_tls = 5;
static __thread int hits;
__attribute__((noipa)) int compute(int x) { hits++; return x * 100; }
`,
		fixed: `__thread int shared_tls = 5;
static __thread int hits;
__attribute__((noipa)) int compute(int x) { hits++; return x * 100 + shared_tls + (hits > 1 ? 1000 : 0); }
`,
		changed: []string{"compute"},
		before:  "200", after: "1205"}
	// The program copies the library's exported variable into itself (a copy
	// relocation) and sets it; the library reads it through its GOT. The patch must
	// read the program's copy (5), not the library's own dead one (7).
	copyReloc := e2eCase{shared: true, main: `#include <stdio.h>
#include <unistd.h>
extern int foo_level;
int compute(int);
int main(void) {
	foo_level = 5;
	for (;;) { printf("%d\n", compute(2)); fflush(stdout); usleep(10000); }
}
`,
		orig:    "int foo_level = 7;\n__attribute__((noipa)) int compute(int x) { return x * 100 + foo_level; }\n",
		fixed:   "int foo_level = 7;\n__attribute__((noipa)) int compute(int x) { return x * 1000 + foo_level; }\n",
		changed: []string{"compute"},
		before:  "205", after: "2005"}
	for name, c := range map[string]e2eCase{"library-copy-relocation": copyReloc, "statics": statics, "inlined": inlined, "shared-library": shared, "jump-table": table,
		"non-PIE": noPIE, "duplicate-names": dup, "C++": cxx, "O0-strings": strings0, "far-data": farData, "library-TLS": libTLS} {
		t.Run(name, func(t *testing.T) { runE2E(t, manage, c) })
	}
}

func runE2E(t *testing.T, manage string, c e2eCase) {
	dir := t.TempDir()
	pic := "-fPIE"
	switch {
	case c.shared:
		pic = "-fPIC"
	case c.noPIE:
		pic = "-fno-PIE"
	}
	opt := c.opt
	if opt == "" {
		opt = "-O2"
	}
	cc := func(d, name, src, pic string, cxx bool) string {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		compiler, file := "gcc", name+".c"
		if cxx {
			compiler, file = "g++", name+".cc"
		}
		if err := os.WriteFile(filepath.Join(d, file), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"-c", opt, "-ffunction-sections", "-fdata-sections", "-gdwarf", pic, "-o", name + ".o", file}, c.flags...)
		cmd := exec.Command(compiler, args...)
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", compiler, err, out)
		}
		return filepath.Join(d, name+".o")
	}
	mainPIC := "-fPIE"
	if c.noPIE {
		mainPIC = "-fno-PIE"
	}
	mo := cc(dir, "main", c.main, mainPIC, false)
	lo := cc(dir, "lib", c.orig, pic, c.cxx)
	lp := cc(filepath.Join(dir, "fixed"), "lib", c.fixed, pic, c.cxx)
	libObjs := []string{lo}
	if c.other != "" {
		libObjs = append(libObjs, cc(dir, "other", c.other, pic, false))
	}
	linker := "gcc"
	if c.cxx {
		linker = "g++"
	}
	prog := filepath.Join(dir, "prog")
	target := prog
	exe := "-pie"
	if c.noPIE {
		exe = "-no-pie"
	}
	link := append([]string{exe, "-Wl,--build-id", "-o", prog, mo}, libObjs...)
	if c.shared {
		target = filepath.Join(dir, "liblib.so")
		if out, err := exec.Command(linker, append([]string{"-shared", "-Wl,--build-id", "-o", target}, libObjs...)...).CombinedOutput(); err != nil {
			t.Fatalf("link library: %v\n%s", err, out)
		}
		link = []string{exe, "-o", prog, mo, target, "-Wl,-rpath," + dir}
	}
	if out, err := exec.Command(linker, link...).CombinedOutput(); err != nil {
		t.Fatalf("link: %v\n%s", err, out)
	}
	// Ship it as a distribution does: debug file apart, the binary stripped.
	debugFile := filepath.Join(t.TempDir(), "target.debug")
	for _, args := range [][]string{{"objcopy", "--only-keep-debug", target, debugFile}, {"strip", "--strip-all", target}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", args[0], err, out)
		}
	}
	if out, _ := exec.Command("readelf", "-S", target).CombinedOutput(); strings.Contains(string(out), ".symtab") {
		t.Fatalf("%s still has a .symtab", target)
	}
	loc, err := debuginfo.NewLocator(debugFile)
	if err != nil {
		t.Fatal(err)
	}
	ob, _ := os.ReadFile(lo)
	pb, _ := os.ReadFile(lp)
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{Locator: loc, Resolver: loc, AliasPrefix: "__lib_"})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Changed(); strings.Join(got, " ") != strings.Join(c.changed, " ") {
		t.Fatalf("changed %q, want %q\n%s", got, c.changed, r)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	obj, err := patchobj.ParseBytes(b)
	if err != nil || !obj.SelfContained() {
		t.Fatalf("emitted object: self-contained %v, %v", err == nil && obj.SelfContained(), err)
	}
	frag := filepath.Join(dir, "frag.o")
	if err := os.WriteFile(frag, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Record the target's build-id, as the builder does, so that no --force is needed.
	id, err := exec.Command("sh", "-c", "readelf -n "+target+" | sed -n 's/.*Build ID: //p'").Output()
	if err != nil || len(bytes.TrimSpace(id)) == 0 {
		t.Fatalf("build-id of %s: %v", target, err)
	}
	idFile := filepath.Join(dir, "build-id")
	if err := os.WriteFile(idFile, append(bytes.TrimSpace(id), 0), 0o644); err != nil {
		t.Fatal(err)
	}
	patch := filepath.Join(dir, "patch.o")
	if out, err := exec.Command("objcopy", "--add-section", patchobj.BuildIDSection+"="+idFile, frag, patch).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	p := exec.Command(prog)
	stdout, err := p.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { p.Process.Kill(); p.Wait() }()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads between phases: drop
			}
		}
		close(lines)
	}()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("program exited before printing %q", want)
				}
				if l == want {
					return
				}
			case <-deadline:
				t.Fatalf("program never printed %q", want)
			}
		}
	}
	waitFor(c.before)
	args := []string{"patch", "--pid", itoa(p.Process.Pid), "--patch", patch, "--uuid", "e2e-diff"}
	if c.shared {
		args = append(args, "--binary", target)
	}
	if out, err := exec.Command(manage, args...).CombinedOutput(); err != nil {
		t.Fatalf("upatch-manage patch: %v\n%s", err, out)
	}
	waitFor(c.after)
	args = []string{"unpatch", "--pid", itoa(p.Process.Pid), "--uuid", "e2e-diff"}
	if c.shared {
		args = append(args, "--binary", target)
	}
	if out, err := exec.Command(manage, args...).CombinedOutput(); err != nil {
		t.Fatalf("upatch-manage unpatch: %v\n%s", err, out)
	}
	waitFor(c.before)
}
