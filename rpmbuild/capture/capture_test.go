package capture

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// The test binary doubles as the compiler wrapper and the namespace helper, like
// syscare-build does, so the tests run the real code paths.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == NSExecArg {
		if err := ExecInNamespace(os.Args[2:]); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	}
	if IsWrapperCall(os.Args[0]) {
		os.Exit(RunWrapper(os.Args))
	}
	os.Exit(m.Run())
}

func TestParse(t *testing.T) {
	tests := []struct {
		args    []string
		mode    Mode
		sources []string
		out     string
		noLTO   bool
	}{
		{[]string{"-O2", "-flto=auto", "-ffat-lto-objects", "-c", "a.c", "-o", "a.o"}, Compile, []string{"a.c"}, "a.o", true},
		{[]string{"-c", "-I", "inc.c", "x.cpp", "y.cc"}, Compile, []string{"x.cpp", "y.cc"}, "", true},
		{[]string{"-o", "prog", "a.o", "b.c", "-lm"}, Link, []string{"b.c"}, "prog", true},
		{[]string{"-shared", "-oliba.so", "a.o"}, Link, nil, "liba.so", true},
		{[]string{"-E", "a.c"}, Other, []string{"a.c"}, "", false},
		{[]string{"--version"}, Other, nil, "", false},
		{[]string{"-x", "c", "-c", "-"}, Other, nil, "", false},
	}
	for _, tt := range tests {
		inv := Parse(tt.args)
		if inv.Mode != tt.mode || inv.Output != tt.out {
			t.Errorf("%q: mode %v output %q, want %v %q", tt.args, inv.Mode, inv.Output, tt.mode, tt.out)
		}
		var srcs []string
		for _, s := range inv.Sources {
			srcs = append(srcs, inv.Args[s])
		}
		if tt.mode != Other && !reflect.DeepEqual(srcs, tt.sources) {
			t.Errorf("%q: sources %q, want %q", tt.args, srcs, tt.sources)
		}
		if tt.noLTO {
			for _, a := range inv.Args {
				if strings.HasPrefix(a, "-flto") || a == "-ffat-lto-objects" {
					t.Errorf("%q: LTO flag %q kept", tt.args, a)
				}
			}
			for _, f := range AddedFlags {
				if !slices.Contains(inv.Args, f) {
					t.Errorf("%q: %s not added", tt.args, f)
				}
			}
		} else if !reflect.DeepEqual(inv.Args, tt.args) {
			t.Errorf("%q: passthrough rewritten to %q", tt.args, inv.Args)
		}
	}
	inv := Parse([]string{"-c", "-O2", "x.c", "y.c", "-o", "z.o"})
	got := inv.CompileArgs(inv.Sources[1], "y.o")
	if slices.Contains(got, "x.c") || slices.Contains(got, "z.o") || !slices.Contains(got, "y.c") || got[len(got)-1] != "y.o" {
		t.Errorf("CompileArgs = %q", got)
	}
}

func TestParseDepfile(t *testing.T) {
	in := "a.o: a.c /usr/include/stdio.h \\\n  inc/my\\ h.h b.h\n\nb.h:\ninc/my\\ h.h:\n"
	want := []string{"a.c", "/usr/include/stdio.h", "inc/my h.h", "b.h"}
	if got := ParseDepfile(in); !reflect.DeepEqual(got, want) {
		t.Errorf("ParseDepfile = %q, want %q", got, want)
	}
}

func writeTree(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	files := map[string]string{
		"h.h": "#define K 3\n",
		"a.c": "#include \"h.h\"\nint fa(int x) { return x * K; }\nint data_a = 5;\n",
		"b.c": "#include <stdio.h>\nint fa(int);\nint main(void) { printf(\"%d\\n\", fa(2)); return 0; }\n",
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(d, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func newCapture(t *testing.T, bind bool) *Capture {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(t.TempDir(), self, bind)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func runIn(t *testing.T, c *Capture, dir, script string) {
	t.Helper()
	cmd := c.Command(context.Background(), "/bin/sh", "-c", script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

func hasSection(t *testing.T, obj, name string) bool {
	t.Helper()
	f, err := elf.Open(obj)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Section(name) != nil
}

// The wrapper behind PATH shims and CC: flags rewritten, each TU recorded with its
// headers, a compile-and-link command split so that its TU has an object too.
func TestWrapperRecordsAndRewrites(t *testing.T) {
	d := writeTree(t)
	c := newCapture(t, false)
	runIn(t, c, d, `gcc -O2 -flto -c a.c -o a.o && $CC -O2 -o prog a.o b.c && ./prog > out`)
	if out, _ := os.ReadFile(filepath.Join(d, "out")); string(out) != "6\n" {
		t.Fatalf("program output %q", out)
	}
	recs, err := c.Records()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("got %d records, want 3: %+v", len(recs), recs)
	}
	a, b, link := recs[0], recs[1], recs[2]
	if a.Kind != KindCompile || a.Source != filepath.Join(d, "a.c") || a.Object != filepath.Join(d, "a.o") || a.Dir != d {
		t.Errorf("compile record of a.c: %+v", a)
	}
	if slices.Contains(a.Args, "-flto") || !slices.Contains(a.Args, "-ffunction-sections") {
		t.Errorf("a.c args not rewritten: %q", a.Args)
	}
	if !slices.Contains(a.Deps, filepath.Join(d, "h.h")) {
		t.Errorf("a.c deps %q lack h.h", a.Deps)
	}
	if !hasSection(t, a.Object, ".text.fa") || !hasSection(t, a.Object, ".data.data_a") || !hasSection(t, a.Object, ".debug_info") {
		t.Errorf("a.o lacks per-function/per-data sections or DWARF")
	}
	if b.Source != filepath.Join(d, "b.c") || !strings.HasPrefix(b.Object, filepath.Join(c.Dir, "objs")) {
		t.Errorf("split compile of b.c: %+v", b)
	}
	if link.Kind != KindLink || link.Output != filepath.Join(d, "prog") ||
		!slices.Contains(link.Inputs, a.Object) || !slices.Contains(link.Inputs, b.Object) {
		t.Errorf("link record: %+v", link)
	}
	// The recorded command rebuilds the object on its own.
	os.Remove(a.Object)
	cmd := exec.Command(c.RealCC, a.Args...)
	cmd.Dir = a.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	if !hasSection(t, a.Object, ".text.fa") {
		t.Error("rerun did not rebuild a.o")
	}
}

// C++ goes to the real g++ and is recorded as such.
func TestWrapperCXX(t *testing.T) {
	c := newCapture(t, false)
	testenv.Require(t, c.RealCXX != "", "no g++ on this machine")
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "k.cc"), []byte("struct K { int f(int x); };\nint K::f(int x) { return x + 1; }\n"), 0o644)
	runIn(t, c, d, `$CXX -O2 -c k.cc`)
	recs, err := c.Records()
	if err != nil || len(recs) != 1 || recs[0].Lang != "c++" || recs[0].Object != filepath.Join(d, "k.o") {
		t.Fatalf("records %+v %v", recs, err)
	}
	if !hasSection(t, recs[0].Object, ".text._ZN1K1fEi") {
		t.Error("k.o lacks the member function's own section")
	}
}

// Plain assembler (.s, as OpenSSL's perlasm scripts generate it) gets no depfile from
// gcc, also when the command asks for one: the record names the source as its only
// input, and a compile with -MMD -MF that gcc leaves unwritten is not an error. A .S file
// is preprocessed and keeps its real dependencies.
func TestWrapperPlainAssembler(t *testing.T) {
	c := newCapture(t, false)
	d := t.TempDir()
	asm := func(name, value string) []byte {
		return []byte(fmt.Sprintf(".text\n.globl %[1]s\n.type %[1]s,@function\n%[1]s:\n\tmovl $%[2]s, %%eax\n\tret\n.size %[1]s,.-%[1]s\n", name, value))
	}
	os.WriteFile(filepath.Join(d, "f.s"), asm("f", "7"), 0o644)
	os.WriteFile(filepath.Join(d, "g.s"), asm("g", "8"), 0o644)
	os.WriteFile(filepath.Join(d, "k.h"), []byte("#define K 9\n"), 0o644)
	os.WriteFile(filepath.Join(d, "h.S"), append([]byte("#include \"k.h\"\n"), asm("h", "K")...), 0o644)
	runIn(t, c, d, `gcc -Wa,--noexecstack -c -o f.o f.s && gcc -MMD -MF g.d -c -o g.o g.s && gcc -c h.S`)
	recs, err := c.Records()
	if err != nil || len(recs) != 3 {
		t.Fatalf("records %+v %v", recs, err)
	}
	for i, name := range []string{"f", "g"} {
		r := recs[i]
		src := filepath.Join(d, name+".s")
		if r.Kind != KindCompile || r.Source != src || r.Object != filepath.Join(d, name+".o") || !slices.Equal(r.Deps, []string{src}) {
			t.Errorf("record of %s.s: %+v", name, r)
		}
	}
	if !slices.Contains(recs[2].Deps, filepath.Join(d, "k.h")) {
		t.Errorf("h.S deps %q lack k.h", recs[2].Deps)
	}
}

// A compiler called by absolute path escapes PATH shims; the mount namespace catches it
// and leaves the host's /usr/bin/gcc untouched.
func TestNamespaceBindCatchesAbsolutePath(t *testing.T) {
	testenv.NeedRoot(t, "mount namespaces")
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatal(err)
	}
	gcc, _ = filepath.Abs(gcc)
	before, _ := os.ReadFile(c0(t, gcc))
	for _, bind := range []bool{false, true} {
		d := writeTree(t)
		c := newCapture(t, bind)
		runIn(t, c, d, gcc+` -c a.c -o a.o && /usr/bin/env -u CC cc -c b.c`)
		recs, err := c.Records()
		if err != nil {
			t.Fatal(err)
		}
		var srcs []string
		for _, r := range recs {
			srcs = append(srcs, filepath.Base(r.Source))
		}
		want := []string{"b.c"}
		if bind {
			want = []string{"a.c", "b.c"}
		}
		if !reflect.DeepEqual(srcs, want) {
			t.Errorf("bind=%v: recorded %q, want %q", bind, srcs, want)
		}
	}
	after, _ := os.ReadFile(c0(t, gcc))
	if len(before) == 0 || !slices.Equal(before, after) {
		t.Error("host compiler changed after the namespace run")
	}
}

func c0(t *testing.T, p string) string {
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// gcc 12, installed here, accepts -mno-direct-extern-access: the wrapper adds it, and a
// variable the unit does not define is then read through the GOT, which a patch loaded
// far from the library holding the variable can still use.
func TestOptionalFlagIndirectExternAccess(t *testing.T) {
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "x.c"), []byte("extern int ext;\nint f(void) { return ext; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCapture(t, false)
	if !slices.Contains(c.Extra, "-mno-direct-extern-access") {
		t.Fatalf("extra flags %q: the compiler here (gcc 12) accepts -mno-direct-extern-access", c.Extra)
	}
	runIn(t, c, d, `gcc -O2 -fPIE -c x.c -o x.o`)
	recs, err := c.Records()
	if err != nil || len(recs) != 1 || !slices.Contains(recs[0].Args, "-mno-direct-extern-access") {
		t.Fatalf("records %+v, %v: want the option in the compile", recs, err)
	}
	f, err := elf.Open(filepath.Join(d, "x.o"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rela := f.Section(".rela.text.f")
	if rela == nil {
		t.Fatal("x.o has no .rela.text.f")
	}
	b, err := rela.Data()
	if err != nil || len(b) < 24 {
		t.Fatalf("relocations of f: %v", err)
	}
	if typ := elf.R_X86_64(binary.LittleEndian.Uint64(b[8:]) & 0xffffffff); typ != elf.R_X86_64_REX_GOTPCRELX {
		t.Errorf("ext is reached by %v, want R_X86_64_REX_GOTPCRELX", typ)
	}
}
