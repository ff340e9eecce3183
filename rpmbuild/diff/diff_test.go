package diff

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// Test cases are named by their expected outcome: a case whose name ends in "-FAIL"
// must be refused as unpatchable, "-NOCHANGE" must give ErrNoChange, every other case
// must build a patch object that patchobj.Parse accepts and that replaces exactly the
// listed functions.

// compile builds one C or C++ source the way the builder compiles every translation unit.
func compile(t testing.TB, dir, name, src string, pic string) []byte {
	t.Helper()
	cc := "gcc"
	ext := ".c"
	if strings.HasSuffix(name, ".cc") {
		cc, ext = "g++", ""
	}
	srcPath := filepath.Join(dir, name+ext)
	if err := os.WriteFile(srcPath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, name+"."+strings.TrimPrefix(pic, "-")+".o")
	args := []string{"-c", "-O2", "-ffunction-sections", "-fdata-sections", "-gdwarf", pic, "-o", obj, name + ext}
	cmd := exec.Command(cc, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", cc, strings.Join(args, " "), err, out)
	}
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pair compiles the original and the fixed source under the same file name, so that
// both carry the same STT_FILE and DWARF file names, as in a real rebuild.
func pair(t testing.TB, file, orig, fixed, pic string) ([]byte, []byte) {
	t.Helper()
	od, pd := t.TempDir(), t.TempDir()
	return compile(t, od, file, orig, pic), compile(t, pd, file, fixed, pic)
}

type diffCase struct {
	name    string
	file    string // source file name; ".cc" suffix compiles as C++
	orig    string
	fixed   string
	changed []string
	added   []string
	// want: substrings of the text dump
	dump []string
	// reason: substring of the refusal
	reason string
}

var cases = []diffCase{
	{
		name: "changed-function", file: "a",
		orig:    "int g;\nint add(int a, int b) { return a + b + g; }\nint keep(int x) { return x * 7; }\n",
		fixed:   "int g;\nint add(int a, int b) { return a - b + g; }\nint keep(int x) { return x * 7; }\n",
		changed: []string{"add"},
		dump:    []string{"CHANGED func    add\n", "SAME    func    keep\n"},
	},
	{
		name: "new-static-helper", file: "b",
		orig: `#include <stdio.h>
__attribute__((noinline)) int work(int x) { printf("work %d\n", x); return x; }
int other(void) { return 3; }
`,
		fixed: `#include <stdio.h>
static __attribute__((noinline)) int clamp(int x) { return x > 100 ? 100 : x; }
__attribute__((noinline)) int work(int x) { printf("work %d\n", clamp(x)); return clamp(x); }
int other(void) { return 3; }
`,
		changed: []string{"work"},
		added:   []string{"clamp"},
		dump:    []string{"NEW     func    clamp\n"},
	},
	{
		name: "new-string-literal", file: "c",
		orig: `#include <stdio.h>
void hello(void) { puts("hello"); }
void bye(void) { puts("bye"); }
void msg(int x) { printf("value %d\n", x); }
`,
		fixed: `#include <stdio.h>
void hello(void) { puts("hello, world"); }
void bye(void) { puts("bye"); }
void msg(int x) { printf("value %d\n", x); }
`,
		changed: []string{"hello"},
		dump:    []string{"SAME    func    bye\n", "SAME    func    msg\n"},
	},
	{
		name: "changed-static-local-kept", file: "d",
		orig: `int next(void) { static int counter; return ++counter; }
int other(void) { static int counter = 5; return counter++; }
`,
		fixed: `int next(void) { static int counter; counter += 2; return counter; }
int other(void) { static int counter = 5; return counter++; }
`,
		changed: []string{"next"},
		dump:    []string{"SAME    object  counter."},
	},
	{
		name: "header-inline-used-twice", file: "e",
		orig: `static inline int scale(int x) { return x * 3; }
int f1(int a) { return scale(a) + 1; }
int f2(int a) { return scale(a) + 2; }
int f3(int a) { return a + 3; }
`,
		fixed: `static inline int scale(int x) { return x * 5; }
int f1(int a) { return scale(a) + 1; }
int f2(int a) { return scale(a) + 2; }
int f3(int a) { return a + 3; }
`,
		changed: []string{"f1", "f2"},
	},
	{
		name: "cxx-member-function", file: "m.cc",
		orig: `struct Account { long bal; long deposit(long v); long get() const; };
long Account::deposit(long v) { bal += v; return bal; }
long Account::get() const { return bal; }
`,
		fixed: `struct Account { long bal; long deposit(long v); long get() const; };
long Account::deposit(long v) { if (v < 0) return bal; bal += v; return bal; }
long Account::get() const { return bal; }
`,
		changed: []string{"_ZN7Account7depositEl"},
	},
	{
		// exceptions (.gcc_except_table, a cold part) and template COMDAT groups that
		// the fix leaves alone (their .rela members must not count as changes)
		name: "cxx-exceptions-templates", file: "x.cc",
		orig: `#include <vector>
#include <string>
#include <stdexcept>
struct Reg { std::vector<std::string> names; size_t add(const std::string &s); };
size_t Reg::add(const std::string &s) { if (s.empty()) throw std::invalid_argument("empty"); names.push_back(s); return names.size(); }
template <class T> T twice(T x) { return x + x; }
int usei(int x) { return twice(x) + 1; }
`,
		fixed: `#include <vector>
#include <string>
#include <stdexcept>
struct Reg { std::vector<std::string> names; size_t add(const std::string &s); };
size_t Reg::add(const std::string &s) { if (s.empty() || s.size() > 100) throw std::invalid_argument("bad name"); names.push_back(s); return names.size(); }
template <class T> T twice(T x) { return x + x; }
int usei(int x) { return twice(x) + 1; }
`,
		changed: []string{"_ZN3Reg3addERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"},
	},
	{
		name: "cold-split", file: "k",
		orig: `#include <stdio.h>
#include <stdlib.h>
extern int check(int);
__attribute__((cold, noinline)) void report(int i) { fprintf(stderr, "bad %d\n", i); }
int work(int n) {
	int s = 0;
	for (int i = 0; i < n; i++) {
		if (__builtin_expect(check(i), 0)) { report(i); fprintf(stderr, "at %d\n", i); s -= 7; continue; }
		s += i;
	}
	return s;
}
`,
		fixed: `#include <stdio.h>
#include <stdlib.h>
extern int check(int);
__attribute__((cold, noinline)) void report(int i) { fprintf(stderr, "bad %d\n", i); }
int work(int n) {
	int s = 0;
	for (int i = 0; i < n; i++) {
		if (__builtin_expect(check(i), 0)) { report(i); fprintf(stderr, "at %d!\n", i); s -= 7; continue; }
		s += i;
	}
	return s;
}
`,
		changed: []string{"work"},
	},
	{
		name: "no-change-NOCHANGE", file: "f",
		orig:  "int v(int x) { return x + 1; }\n",
		fixed: "/* only a comment */\nint v(int x) { return x + 1; }\n",
	},
	{
		name: "line-shift", file: "l",
		orig: `#include <stdio.h>
#define LOG(x) printf("%s:%d %d\n", __FILE__, __LINE__, (x))
int a1(int x) { LOG(x); return x; }
int a2(int x) { LOG(x); return x + 2; }
int a3(int x) { LOG(x); return x + 3; }
`,
		fixed: `#include <stdio.h>
#define LOG(x) printf("%s:%d %d\n", __FILE__, __LINE__, (x))
int a1(int x) { LOG(x); return x + 100; }

int a2(int x) { LOG(x); return x + 2; }
int a3(int x) { LOG(x); return x + 3; }
`,
		changed: []string{"a1"},
		dump:    []string{"line-only functions: a2 a3\n"},
	},
	{
		// An in-class member function lives in a COMDAT group: it is replaced like any
		// other function (the builder proves which copy the binary kept).
		name: "comdat-member", file: "q.cc",
		orig: `struct Box { int v; __attribute__((noipa)) int twice() const { return v * 2; } };
int use(Box *b) { return b->twice() + 1; }
`,
		fixed: `struct Box { int v; __attribute__((noipa)) int twice() const { return v * 3; } };
int use(Box *b) { return b->twice() + 1; }
`,
		changed: []string{"_ZNK3Box5twiceEv"},
	},
	{
		// The inline member's static local and its guard stay the binary's: only the
		// code changes, and the patch references the running instance.
		name: "comdat-static-local", file: "s.cc",
		orig: `int seed(int);
struct Ctr { __attribute__((noipa)) int next() { static int n = seed(1); return ++n; } };
int use(Ctr *c) { return c->next(); }
`,
		fixed: `int seed(int);
struct Ctr { __attribute__((noipa)) int next() { static int n = seed(1); n += 2; return n; } };
int use(Ctr *c) { return c->next(); }
`,
		changed: []string{"_ZN3Ctr4nextEv"},
	},
	{
		// A member function's own read-only data in its group (a switch's jump table,
		// an exception table) travels with its code.
		name: "comdat-member-tables", file: "j.cc",
		orig: `#include <stdexcept>
extern void note(int);
struct Op { int k; __attribute__((noipa)) int run(int x) const {
	switch (k) { case 0: return x + 1; case 1: return x * 3; case 2: return x - 7; case 3: return x ^ 5;
	case 4: return x << 2; case 5: return x / 3; case 6: return -x; default: throw std::runtime_error("op"); } } };
int use(Op *o, int x) { try { return o->run(x); } catch (...) { note(x); return 0; } }
`,
		fixed: `#include <stdexcept>
extern void note(int);
struct Op { int k; __attribute__((noipa)) int run(int x) const {
	switch (k) { case 0: return x + 1; case 1: return x * 3; case 2: return (x - 9) * x + (x >> 3); case 3: return x ^ 5;
	case 4: return x << 2; case 5: return x / 3; case 6: return -x; default: throw std::runtime_error("bad op"); } } };
int use(Op *o, int x) { try { return o->run(x); } catch (...) { note(x); return 0; } }
`,
		changed: []string{"_ZNK2Op3runEi"},
	},
	{
		name: "vtable-FAIL", file: "v.cc",
		orig: `struct Shape { virtual ~Shape(); virtual int area() const; };
Shape::~Shape() {}
int Shape::area() const { return 0; }
`,
		fixed: `struct Shape { virtual ~Shape(); virtual int area() const; virtual int sides() const; };
Shape::~Shape() {}
int Shape::area() const { return 0; }
int Shape::sides() const { return 0; }
`,
		reason: "vtable _ZTV5Shape",
	},
	{
		name: "comdat-static-init-FAIL", file: "t.cc",
		orig: `struct Lim { __attribute__((noipa)) int max() { static int m = 10; return m++; } };
int use(Lim *l) { return l->max(); }
`,
		fixed: `struct Lim { __attribute__((noipa)) int max() { static int m = 20; return m++; } };
int use(Lim *l) { return l->max(); }
`,
		reason: "static local variable _ZZN3Lim3maxEvE1m of vague linkage",
	},
	{
		name: "ifunc-FAIL", file: "i",
		orig: `static int impl1(int x) { return x + 1; }
static int (*resolve(void))(int) { return impl1; }
int fast(int) __attribute__((ifunc("resolve")));
`,
		fixed: `static int impl1(int x) { return x + 1; }
static int impl2(int x) { return x + 2; }
static int (*resolve(void))(int) { return impl2; }
int fast(int) __attribute__((ifunc("resolve")));
`,
		reason: "ifunc",
	},
	{
		name: "global-initializer-FAIL", file: "g",
		orig:   "int limit = 10;\nint get(void) { return limit; }\n",
		fixed:  "int limit = 20;\nint get(void) { return limit; }\n",
		reason: "changed initial value",
	},
	{
		name: "new-tls-FAIL", file: "h",
		orig:   "int bump(void) { static int n; return ++n; }\n",
		fixed:  "static __thread int tn;\nint bump(void) { static int n; tn++; return ++n + tn; }\n",
		reason: "new thread-local variable",
	},
}

func TestDiffCases(t *testing.T) {
	for _, pic := range []string{"-fPIE", "-fPIC"} {
		for _, c := range cases {
			t.Run(c.name+pic, func(t *testing.T) {
				t.Parallel()
				runCase(t, c, pic)
			})
		}
	}
}

func runCase(t *testing.T, c diffCase, pic string) {
	t.Helper()
	ob, pb := pair(t, c.file, c.orig, c.fixed, pic)
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{AliasPrefix: "__p_"})
	switch {
	case strings.HasSuffix(c.name, "-NOCHANGE"):
		if !errors.Is(err, ErrNoChange) {
			t.Fatalf("Diff: %v, want ErrNoChange", err)
		}
		return
	case strings.HasSuffix(c.name, "-FAIL"):
		var ue *UnpatchableError
		if !errors.As(err, &ue) {
			t.Fatalf("Diff: %v, want UnpatchableError", err)
		}
		if !strings.Contains(ue.Error(), c.reason) || ue.Section == "" {
			t.Fatalf("refusal %q does not say %q", ue, c.reason)
		}
		return
	}
	if err != nil {
		t.Fatalf("Diff: %v", err)
	}
	dump := r.String()
	if !reflect.DeepEqual(r.Changed(), c.changed) {
		t.Errorf("changed %q, want %q\n%s", r.Changed(), c.changed, dump)
	}
	if !reflect.DeepEqual(r.New(), c.added) {
		t.Errorf("new %q, want %q\n%s", r.New(), c.added, dump)
	}
	for _, w := range c.dump {
		if !strings.Contains(dump, w) {
			t.Errorf("dump lacks %q:\n%s", w, dump)
		}
	}
	b, err := r.Object()
	if err != nil {
		t.Fatalf("Object: %v", err)
	}
	po, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatalf("patchobj.Parse: %v", err)
	}
	var got []string
	for _, f := range po.Funcs {
		got = append(got, f.OldName)
	}
	sort.Strings(got)
	if !reflect.DeepEqual(got, c.changed) {
		t.Errorf("patch object replaces %q, want %q", got, c.changed)
	}
	if t.Failed() {
		t.Log(dump)
	}
}

// The refusal names the function that uses the data, the section and the reason.
func TestRefusalNamesAll(t *testing.T) {
	ob, pb := pair(t, "g", "int limit = 10;\nint get(void) { return limit; }\n", "int limit = 20;\nint get(void) { return limit; }\n", "-fPIE")
	_, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	var ue *UnpatchableError
	if !errors.As(err, &ue) {
		t.Fatalf("Diff: %v", err)
	}
	if ue.Function != "get" || ue.Section != ".data.limit" {
		t.Errorf("refusal %+v, want function get, section .data.limit", ue)
	}
	for _, s := range []string{"get", ".data.limit", "limit"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("message %q lacks %q", err, s)
		}
	}
}

func TestDiffRejectsNonObjects(t *testing.T) {
	ob, _ := pair(t, "a", "int x(void){return 1;}\n", "", "-fPIE")
	for _, bad := range [][]byte{nil, []byte("not an elf"), ob[:100]} {
		if _, err := Diff(bytes.NewReader(bad), bytes.NewReader(ob), Options{}); err == nil {
			t.Errorf("Diff accepted %d bytes of garbage", len(bad))
		}
	}
	_ = elf.ET_REL
}

// At -O0 every string of a file shares one .rodata. A changed string that a table in
// writable data points to changes that table's initial value: refused. A longer string
// placed before the others moves them, which is no change of what they hold.
func TestStringPoolPieces(t *testing.T) {
	o0 := func(dir, src string) []byte {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "p.c"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("gcc", "-c", "-O0", "-ffunction-sections", "-fdata-sections", "-gdwarf", "-fPIE", "-o", "p.o", "p.c")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, "p.o"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	orig := `const char *first(void) { return "one"; }
static const char *names[] = { "alpha", "beta" };
const char *pick(int i) { return names[i & 1]; }
`
	for _, c := range []struct {
		name, fixed, want string
		changed           []string
	}{
		{"table string changed", strings.Replace(orig, `"beta"`, `"BETA"`, 1), "changed initial value", nil},
		{"longer string before", strings.Replace(orig, `"one"`, `"a much longer one"`, 1), "", []string{"first"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := Diff(bytes.NewReader(o0(t.TempDir(), orig)), bytes.NewReader(o0(t.TempDir(), c.fixed)), Options{})
			if c.want != "" {
				var ue *UnpatchableError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("Diff: %v, want a refusal with %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(r.Changed(), c.changed) {
				t.Errorf("changed %q, want %q\n%s", r.Changed(), c.changed, r)
			}
		})
	}
}

// A reference past the end of a pool (a malformed object, or a biased pointer) bounds
// the piece before it and is itself empty: no panic.
func TestPoolPieceBounds(t *testing.T) {
	s := &section{pool: true, data: []byte("0123456789abcdef"), pieces: []int64{8, 20}}
	if got := mergedContent(s, 8); got != `"89abcdef"` {
		t.Errorf("piece at 8 = %s", got)
	}
	if got := mergedContent(s, 20); !strings.HasPrefix(got, "?") {
		t.Errorf("piece at 20 = %s, want the out-of-range mark", got)
	}
}
