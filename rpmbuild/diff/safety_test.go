package diff

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// Safety cases (issue 6) run through the same table runner as the differ cases.
var safetyCases = []diffCase{
	{
		// A union of unnamed structs (the kernel's qspinlock): the members pair by their
		// order among the unnamed ones, so an unchanged type is not a layout change.
		name: "anonymous-members-same-OK", file: "s20",
		orig: `struct lock { union { int val; struct { char locked; char pending; }; struct { short lp; short tail; }; }; };
struct lock lk;
int get(void) { return lk.tail; }
`,
		fixed: `struct lock { union { int val; struct { char locked; char pending; }; struct { short lp; short tail; }; }; };
struct lock lk;
int get(void) { return lk.tail + 1; }
`,
		changed: []string{"get"},
	},
	{
		name: "anonymous-member-changed-FAIL", file: "s21",
		orig: `struct lock { union { int val; struct { char locked; char pending; }; struct { short lp; short tail; }; }; };
extern struct lock lk;
int get(void) { return lk.tail; }
`,
		fixed: `struct lock { union { int val; struct { char locked; char pending; }; struct { short lp; char pad; short tail; }; }; };
extern struct lock lk;
int get(void) { return lk.tail + 1; }
`,
		reason: "type of variable lk changed: struct lock: member (anonymous #1): union",
	},
	{
		name: "padding-hole-member-FAIL", file: "s1",
		orig: `struct conf { int limit; char mode; long total; };
struct conf cfg;
int get_mode(void) { return cfg.mode; }
`,
		fixed: `struct conf { int limit; char verbose; char mode; long total; };
struct conf cfg;
int get_mode(void) { return cfg.mode + cfg.verbose; }
`,
		reason: "member verbose added at offset 4; struct conf: member mode moved from offset 4 to 5",
	},
	{
		name: "padding-hole-same-offsets-FAIL", file: "s2",
		orig: `struct rec { char a; int b; long c; };
int use(struct rec *r) { return r->a + r->b; }
`,
		fixed: `struct rec { char a; char flag; int b; long c; };
int use(struct rec *r) { return r->a + r->b + r->flag; }
`,
		reason: "member flag added at offset 1",
	},
	{
		name: "extern-struct-layout-FAIL", file: "s13",
		orig: `struct stats { long hits; int misses; };
extern struct stats st;
int count(void) { return st.misses; }
`,
		fixed: `struct stats { long hits; long lookups; int misses; };
extern struct stats st;
int count(void) { return st.misses; }
`,
		reason: "type of variable st changed: struct stats: member lookups added at offset 8; struct stats: member misses moved from offset 8 to 16",
	},
	{
		name: "enum-renumbered-FAIL", file: "s3",
		orig: `enum color { RED, GREEN, BLUE };
enum color cur;
int is_blue(void) { return cur == BLUE; }
`,
		fixed: `enum color { RED, YELLOW, GREEN, BLUE };
enum color cur;
int is_blue(void) { return cur == BLUE; }
`,
		reason: "constant BLUE changed from 2 to 3",
	},
	{
		name: "static-const-table-changed", file: "s4",
		orig: `static const int tbl[4] = { 10, 20, 30, 40 };
int look(int i) { return tbl[i & 3]; }
int other(int i) { return i * 5; }
`,
		fixed: `static const int tbl[4] = { 10, 20, 30, 41 };
int look(int i) { return tbl[i & 3]; }
int other(int i) { return i * 5; }
`,
		changed: []string{"look"},
		dump:    []string{"CHANGED func    look\n"},
	},
	{
		name: "global-const-table-FAIL", file: "s5",
		orig:   "const int gtbl[4] = { 1, 2, 3, 4 };\nint look(int i) { return gtbl[i & 3]; }\n",
		fixed:  "const int gtbl[4] = { 1, 2, 3, 5 };\nint look(int i) { return gtbl[i & 3]; }\n",
		reason: "global read-only data",
	},
	{
		name: "static-gains-parameter", file: "s6",
		orig: `static __attribute__((noipa)) int calc(int a) { return a * 2; }
int c1(int x) { return calc(x) + 1; }
int c2(int x) { return calc(x) + 2; }
`,
		fixed: `static __attribute__((noipa)) int calc(int a, int b) { return a * 2 + b; }
int c1(int x) { return calc(x, 1) + 1; }
int c2(int x) { return calc(x, 2) + 2; }
`,
		changed: []string{"c1", "c2", "calc"},
	},
	{
		name: "static-gains-parameter-address-taken-FAIL", file: "s7",
		orig: `static __attribute__((noipa)) int calc(int a) { return a * 2; }
static __attribute__((noipa)) int twice(int a) { return a + a; }
static int (*const ops[])() = { calc, twice };
int c1(int x) { return calc(x) + 1; }
int run(int i, int x) { return ops[i & 1](x); }
`,
		fixed: `static __attribute__((noipa)) int calc(int a, int b) { return a * 2 + b; }
static __attribute__((noipa)) int twice(int a) { return a + a; }
static int (*const ops[])() = { calc, twice };
int c1(int x) { return calc(x, 1) + 1; }
int run(int i, int x) { return ops[i & 1](x); }
`,
		reason: "its address is stored in .data.rel.ro",
	},
	{
		name: "signature-caller-left-out-FAIL", file: "s8",
		orig: `static __attribute__((noipa)) int calc(int a) { return a * 2; }
long c1(int x) { return calc(x) + 1; }
void c2(int x) { calc(x); }
`,
		fixed: `static __attribute__((noipa)) long calc(int a) { return a * 2L; }
long c1(int x) { return calc(x) + 1; }
void c2(int x) { calc(x); }
`,
		reason: "caller c2 is not in the patch",
	},
	{
		name: "constructor-warning", file: "s9",
		orig: `int base;
__attribute__((constructor)) static void init(void) { base = 5; }
int get(void) { return base; }
`,
		fixed: `int base;
__attribute__((constructor)) static void init(void) { base = 6; }
int get(void) { return base; }
`,
		changed: []string{"init"},
		dump:    []string{"warning: constructor init CHANGED"},
	},
	{
		name: "main-warning", file: "s10",
		orig:    "#include <stdio.h>\nint main(void) { puts(\"a\"); return 0; }\n",
		fixed:   "#include <stdio.h>\nint main(void) { puts(\"b\"); return 0; }\n",
		changed: []string{"main"},
		dump:    []string{"warning: function main changed"},
	},
	{
		name: "assert-line-shift", file: "s12",
		orig: `#include <assert.h>
int first(int x) { return x * 2; }
int checked(int x) { assert(x > 0); return x - 1; }
int other(int x) { assert(x != 3); return x + 7; }
`,
		fixed: `#include <assert.h>
int first(int x) {
	return x * 3;
}
int checked(int x) { assert(x > 0); return x - 1; }
int other(int x) { assert(x != 3); return x + 7; }
`,
		changed: []string{"first"},
		dump:    []string{"line-only functions: checked other\n"},
	},
	{
		name: "twenty-line-macros", file: "s11",
		orig:    twentyLines(false),
		fixed:   twentyLines(true),
		changed: []string{"f0"},
		dump:    []string{"line-only functions: f1 f10 f11 f12 f13 f14 f15 f16 f17 f18 f19 f2 f20 f3 f4 f5 f6 f7 f8 f9\n"},
	},
}

// twentyLines is a file of 21 functions that log __LINE__; the fix changes f0 and
// inserts a line after it, moving the other twenty.
func twentyLines(fixed bool) string {
	var b strings.Builder
	b.WriteString("#include <stdio.h>\n#define LOG(x) fprintf(stderr, \"line %d: %d\\n\", __LINE__, (x))\n")
	if fixed {
		b.WriteString("int f0(int x) { LOG(x); return x + 1; }\n/* fixed: off by one */\n")
	} else {
		b.WriteString("int f0(int x) { LOG(x); return x; }\n")
	}
	for i := 1; i <= 20; i++ {
		b.WriteString("int f")
		b.WriteString(strings.Repeat("", 0))
		b.WriteString(itoa(i))
		b.WriteString("(int x) {\n\tLOG(x);\n\treturn x * ")
		b.WriteString(itoa(i + 3))
		b.WriteString(";\n}\n")
	}
	return b.String()
}

func itoa(i int) string {
	const d = "0123456789"
	if i < 10 {
		return d[i : i+1]
	}
	return itoa(i/10) + d[i%10:i%10+1]
}

func TestSafetyCases(t *testing.T) {
	for _, pic := range []string{"-fPIE", "-fPIC"} {
		for _, c := range safetyCases {
			t.Run(c.name+pic, func(t *testing.T) {
				t.Parallel()
				runCase(t, c, pic)
			})
		}
	}
}

// A refused change of a structure's members names the shadow variable as the way to
// add per-object state; a renumbered enum, which has no objects to attach to, does not.
func TestLayoutRefusalNamesShadowVariables(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shadow bool
	}{
		{"padding-hole-member-FAIL", true},
		{"padding-hole-same-offsets-FAIL", true},
		{"extern-struct-layout-FAIL", true},
		{"enum-renumbered-FAIL", false},
	} {
		c := caseNamed(tc.name)
		ob, pb := pair(t, c.file, c.orig, c.fixed, "-fPIE")
		_, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
		var ue *UnpatchableError
		if !errors.As(err, &ue) {
			t.Fatalf("%s: %v, want UnpatchableError", tc.name, err)
		}
		if got := strings.Contains(ue.Error(), "shadow variable (upatch_shadow_get_or_alloc in upatch.h)"); got != tc.shadow {
			t.Errorf("%s: refusal %q names a shadow variable: %v, want %v", tc.name, ue, got, tc.shadow)
		}
	}
}

// The changed read-only table ships as a new copy with the new values.
func TestChangedTableShipsNewValues(t *testing.T) {
	c := caseNamed("static-const-table-changed")
	ob, pb := pair(t, c.file, c.orig, c.fixed, "-fPIE")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range r.Included {
		if s == ".rodata.tbl" {
			found = true
		}
	}
	if !found {
		t.Fatalf("included %q, want .rodata.tbl", r.Included)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte{10, 0, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0, 41, 0, 0, 0}) {
		t.Error("the patch object lacks the new table values")
	}
}

// Thread-local access from -fPIC code goes through __tls_get_addr (TLSGD), which the
// loader takes; the descriptor dialect (-mtls-dialect=gnu2) it does not: refused by
// name rather than left for the loader to reject.
func TestTLSAccessFromPIC(t *testing.T) {
	orig := "__thread int tv;\nint bump(void) { return ++tv; }\n"
	fixed := "__thread int tv;\nint bump(void) { tv += 2; return tv; }\n"
	ob, pb := pair(t, "tls", orig, fixed, "-fPIC")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	if err != nil {
		t.Fatalf("Diff of -fPIC TLS access: %v", err)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	po, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	gd := false
	for _, sec := range po.Sections {
		for _, rel := range sec.Relocs {
			gd = gd || rel.Type == elf.R_X86_64_TLSGD
		}
	}
	if !gd {
		t.Error("the patch of -fPIC TLS access carries no R_X86_64_TLSGD")
	}
	gnu2 := func(dir, src string) []byte {
		t.Helper()
		os.WriteFile(filepath.Join(dir, "tls.c"), []byte(src), 0o644)
		cmd := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-gdwarf", "-fPIC", "-mtls-dialect=gnu2", "-o", "tls.o", "tls.c")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
		o, _ := os.ReadFile(filepath.Join(dir, "tls.o"))
		return o
	}
	_, err = Diff(bytes.NewReader(gnu2(t.TempDir(), orig)), bytes.NewReader(gnu2(t.TempDir(), fixed)), Options{})
	var ue *UnpatchableError
	if !errors.As(err, &ue) || !strings.Contains(ue.Reason, "TLSDESC") || ue.Function != "bump" {
		t.Fatalf("Diff: %v, want a refusal naming bump and the TLSDESC relocation", err)
	}
	// The same source as an executable (-fPIE) uses TPOFF/GOTTPOFF, which load.
	ob, pb = pair(t, "tls", orig, fixed, "-fPIE")
	r, err = Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err = r.Object()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := patchobj.ParseBytes(b); err != nil {
		t.Fatalf("patchobj.Parse: %v", err)
	}
	// ld takes the TLS relocations only against a TLS symbol.
	dir := t.TempDir()
	in, out := filepath.Join(dir, "p.o"), filepath.Join(dir, "m.o")
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if msg, err := exec.Command("ld", "-r", "-o", out, in).CombinedOutput(); err != nil {
		t.Fatalf("ld -r: %v\n%s", err, msg)
	}
}

// caseNamed finds a case of either table by name.
func caseNamed(name string) diffCase {
	for _, c := range append(append([]diffCase(nil), cases...), safetyCases...) {
		if c.name == name {
			return c
		}
	}
	panic("no test case " + name)
}
