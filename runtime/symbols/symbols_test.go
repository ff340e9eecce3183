package symbols

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The fixture program: two translation units that each define a static
// function helper and a static variable dup_var (so that positions matter), a
// global, a function-static, two TLS variables (one 64-byte aligned, so the
// block offset rounding is exercised), and printf through the PLT. Run with an
// argument it prints the tp-relative offsets of its TLS variables.
const srcA = `
#include <stdio.h>
int counter = 1;
__thread int tls_small = 7;
__thread char tls_big[100] __attribute__((aligned(64)));
static int dup_var = 10;
static __attribute__((noipa)) int helper(int x) { return x + dup_var++; }
int b_entry(int);
__attribute__((noipa)) int bump(void) { static int count; return ++count; }
int main(int argc, char **argv) {
	if (argc > 1) {
		char *tp;
		__asm__("mov %%fs:0, %0" : "=r"(tp));
		printf("%ld %ld\n", (long)((char *)&tls_small - tp), (long)((char *)tls_big - tp));
		return 0;
	}
	printf("%d %d %d\n", helper(argc), b_entry(argc), bump());
	return counter;
}
`

const srcB = `
static int dup_var = 20;
static __attribute__((noipa)) int helper(int x) { dup_var++; return x * dup_var; }
int b_entry(int x) { return helper(x); }
`

const srcLib = `
int foo_count;
static __attribute__((noipa)) int foo_helper(int x) { return x + 1; }
int foo(int x) { foo_count++; return foo_helper(x); }
`

func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// build compiles the fixture with extra flags into dir/name.
func build(t testing.TB, dir, name string, flags ...string) string {
	t.Helper()
	for f, src := range map[string]string{"a.c": srcA, "b.c": srcB, "lib.c": srcLib} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := append([]string{"-O2", "-g", "-Wl,--build-id=sha1"}, flags...)
	if strings.HasSuffix(name, ".so") {
		args = append(args, "-shared", "-fpic", "lib.c")
	} else {
		args = append(args, "a.c", "b.c")
	}
	run(t, dir, "gcc", append(args, "-o", name)...)
	return filepath.Join(dir, name)
}

// nmAddrs returns the addresses nm lists for name, in symbol-table order.
func nmAddrs(t testing.TB, args ...string) map[string][]uint64 {
	t.Helper()
	out := run(t, "", "nm", append([]string{"-p"}, args...)...)
	m := map[string][]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[1] == "U" || f[1] == "w" {
			continue
		}
		v, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			continue
		}
		m[f[2]] = append(m[f[2]], v)
	}
	return m
}

// objdumpPLT returns the address objdump labels <name@plt>.
func objdumpPLT(t testing.TB, path, name string) (uint64, bool) {
	out := run(t, "", "objdump", "-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got", path)
	for _, line := range strings.Split(out, "\n") {
		if strings.HasSuffix(line, "<"+name+"@plt>:") {
			v, err := strconv.ParseUint(strings.Fields(line)[0], 16, 64)
			if err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

func readelfBuildID(t testing.TB, path string) string {
	out := run(t, "", "readelf", "-n", path)
	for _, line := range strings.Split(out, "\n") {
		if _, id, ok := strings.Cut(line, "Build ID: "); ok {
			return strings.TrimSpace(id)
		}
	}
	t.Fatalf("readelf -n %s: no build-id", path)
	return ""
}

func TestExecutables(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		flags []string
		typ   elf.Type
		plt   bool
	}{
		{"pie", []string{"-fpie", "-pie"}, elf.ET_DYN, true},
		{"nopie", []string{"-fno-pie", "-no-pie"}, elf.ET_EXEC, true},
		{"now", []string{"-fpie", "-pie", "-Wl,-z,now"}, elf.ET_DYN, true},
		{"ibt", []string{"-fcf-protection=full", "-Wl,-z,ibtplt"}, elf.ET_DYN, true},
		{"noplt", []string{"-fno-plt"}, elf.ET_DYN, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := build(t, dir, tc.name, tc.flags...)
			e, err := Open(path, Options{Root: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != tc.typ {
				t.Errorf("Type = %v, want %v", e.Type, tc.typ)
			}
			wantMin := uint64(0)
			if tc.typ == elf.ET_EXEC {
				wantMin = 0x400000
			}
			if e.MinVaddr != wantMin {
				t.Errorf("MinVaddr = %#x, want %#x", e.MinVaddr, wantMin)
			}
			if got, want := fmt.Sprintf("%x", e.BuildID), readelfBuildID(t, path); got != want {
				t.Errorf("BuildID = %s, want %s", got, want)
			}
			nm := nmAddrs(t, path)
			checkStatics(t, e, nm)

			want, wantOK := objdumpPLT(t, path, "printf")
			got, ok := e.PLT("printf")
			if ok != wantOK || got != want || ok != tc.plt {
				t.Errorf("PLT(printf) = %#x %v, objdump says %#x %v", got, ok, want, wantOK)
			}
			if _, ok := e.GOT("printf"); !ok {
				t.Errorf("GOT(printf) not found")
			}
			if _, ok := e.PLT("no_such_function"); ok {
				t.Errorf("PLT(no_such_function) found")
			}

			// TLS: the rule must give the offsets the running program sees.
			if e.TLS == nil || e.TLS.Align != 64 || e.TLS.Memsz != 164 {
				t.Fatalf("TLS = %+v, want align 64 memsz 164", e.TLS)
			}
			var small, big int64
			if _, err := fmt.Sscan(run(t, dir, path, "tls"), &small, &big); err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]int64{"tls_small": small, "tls_big": big} {
				s, err := e.Lookup(name, 0)
				if err != nil {
					t.Fatal(err)
				}
				got, err := e.TPOffset(s)
				if err != nil || got != want {
					t.Errorf("TPOffset(%s) = %d, %v; the process sees %d", name, got, err, want)
				}
			}
			if _, err := e.TPOffset(Symbol{Name: "counter", Type: elf.STT_OBJECT}); err == nil {
				t.Errorf("TPOffset of a non-TLS symbol succeeded")
			}
		})
	}
}

// checkStatics checks lookups of unique, duplicated and function-static symbols against nm.
func checkStatics(t *testing.T, e *ELF, nm map[string][]uint64) {
	t.Helper()
	for _, name := range []string{"counter", "main", "bump", "count.0", "b_entry"} {
		s, err := e.Lookup(name, 0)
		if err != nil || len(nm[name]) != 1 || s.Value != nm[name][0] {
			t.Errorf("Lookup(%s) = %#x, %v; nm says %#x", name, s.Value, err, nm[name])
		}
	}
	for _, name := range []string{"helper", "dup_var"} {
		if len(nm[name]) != 2 {
			t.Fatalf("nm lists %d symbols %q, want 2", len(nm[name]), name)
		}
		_, err := e.Lookup(name, 0)
		if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "2 symbols") {
			t.Errorf("Lookup(%s, 0) error = %v, want ErrAmbiguous naming 2 symbols", name, err)
		}
		for pos := uint64(1); pos <= 2; pos++ {
			s, err := e.Lookup(name, pos)
			if err != nil || s.Value != nm[name][pos-1] {
				t.Errorf("Lookup(%s, %d) = %#x, %v; want %#x", name, pos, s.Value, err, nm[name][pos-1])
			}
		}
		if _, err := e.Lookup(name, 3); !errors.Is(err, ErrNotFound) {
			t.Errorf("Lookup(%s, 3) error = %v, want ErrNotFound", name, err)
		}
	}
	if s, err := e.LookupFunc("helper", 2); err != nil || s.Value != nm["helper"][1] || s.Size == 0 {
		t.Errorf("LookupFunc(helper, 2) = %+v, %v", s, err)
	}
	if _, err := e.LookupFunc("counter", 0); !errors.Is(err, ErrNotFunc) {
		t.Errorf("LookupFunc(counter) error = %v, want ErrNotFunc", err)
	}
	if _, err := e.Lookup("no_such_symbol", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(no_such_symbol) error = %v, want ErrNotFound", err)
	}
}

func TestSharedLibrary(t *testing.T) {
	dir := t.TempDir()
	path := build(t, dir, "libfoo.so")
	e, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Type != elf.ET_DYN || e.TLS != nil {
		t.Errorf("Type %v TLS %+v", e.Type, e.TLS)
	}
	nm := nmAddrs(t, "-D", path)
	for _, name := range []string{"foo", "foo_count"} {
		s, ok := e.Dynamic(name)
		if !ok || s.Value != nm[name][0] {
			t.Errorf("Dynamic(%s) = %#x %v; nm -D says %#x", name, s.Value, ok, nm[name])
		}
	}
	if _, ok := e.Dynamic("foo_helper"); ok {
		t.Errorf("Dynamic found the static foo_helper")
	}
	if s, err := e.LookupFunc("foo_helper", 0); err != nil || s.Type != elf.STT_FUNC {
		t.Errorf("LookupFunc(foo_helper) = %+v, %v", s, err)
	}
}

const libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"

// TestLibc checks default-version selection against nm on the system libc:
// memcpy has memcpy@GLIBC_2.2.5 and memcpy@@GLIBC_2.14.
func TestLibc(t *testing.T) {
	e, err := Open(libc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := run(t, "", "nm", "-D", "--with-symbol-versions", "--defined-only", libc)
	want := map[string]uint64{}
	hidden := map[string]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		v, _ := strconv.ParseUint(f[0], 16, 64)
		if name, _, ok := strings.Cut(f[2], "@@"); ok {
			want[name] = v
		} else if name, _, ok := strings.Cut(f[2], "@"); ok {
			hidden[name] = v
		}
	}
	for _, name := range []string{"printf", "memcpy", "malloc", "stdout", "pthread_create"} {
		s, ok := e.Dynamic(name)
		if !ok || s.Value != want[name] {
			t.Errorf("Dynamic(%s) = %#x %v, nm -D says %#x (non-default version at %#x)", name, s.Value, ok, want[name], hidden[name])
		}
	}
	if want["memcpy"] == hidden["memcpy"] || hidden["memcpy"] == 0 {
		t.Errorf("fixture: libc memcpy should have two versions at different addresses")
	}
	if s, ok := e.Dynamic("errno"); !ok || s.Type != elf.STT_TLS {
		t.Errorf("Dynamic(errno) = %+v %v, want a TLS symbol", s, ok)
	}
}

func TestSeparateDebuginfo(t *testing.T) {
	dir := t.TempDir()
	path := build(t, dir, "prog", "-fpie", "-pie")
	nm := nmAddrs(t, path)
	run(t, dir, "objcopy", "--only-keep-debug", "prog", "prog.debug")
	run(t, dir, "strip", "--strip-all", "prog")
	id := readelfBuildID(t, path)

	// Without debuginfo only .dynsym is left: statics are not found.
	e, err := Open(path, Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if e.HasSymtab() || e.DebugFile != "" {
		t.Fatalf("stripped file has a .symtab (debug file %q)", e.DebugFile)
	}
	if _, err := e.Lookup("helper", 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(helper) on a stripped file: %v, want ErrNotFound", err)
	}
	if s, err := e.Lookup("main", 0); err == nil {
		t.Logf("main from .dynsym: %#x", s.Value)
	}

	t.Run("build-id", func(t *testing.T) {
		root := t.TempDir()
		dbg := filepath.Join(root, "usr/lib/debug/.build-id", id[:2], id[2:]+".debug")
		os.MkdirAll(filepath.Dir(dbg), 0o755)
		if err := os.Link(filepath.Join(dir, "prog.debug"), dbg); err != nil {
			t.Fatal(err)
		}
		e, err := Open(path, Options{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		if e.DebugFile != dbg {
			t.Fatalf("DebugFile = %q, want %q", e.DebugFile, dbg)
		}
		checkStatics(t, e, nm)
	})
	t.Run("fedora-layout", func(t *testing.T) {
		// debuginfo RPMs install /usr/lib/debug/<path>-<v>-<r>.<arch>.debug and a
		// relative build-id symlink to it.
		root := t.TempDir()
		real := filepath.Join(root, "usr/lib/debug/usr/bin/prog-1.0-1.x86_64.debug")
		os.MkdirAll(filepath.Dir(real), 0o755)
		if err := os.Link(filepath.Join(dir, "prog.debug"), real); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(root, "usr/lib/debug/.build-id", id[:2], id[2:]+".debug")
		os.MkdirAll(filepath.Dir(link), 0o755)
		if err := os.Symlink("../../usr/bin/prog-1.0-1.x86_64.debug", link); err != nil {
			t.Fatal(err)
		}
		e, err := Open(path, Options{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		checkStatics(t, e, nm)
	})
	t.Run("wrong-build-id", func(t *testing.T) {
		// A debug file of another build at the right place is ignored.
		other := build(t, t.TempDir(), "other", "-fpie", "-pie", "-DOTHER")
		run(t, filepath.Dir(other), "objcopy", "--only-keep-debug", "other", "other.debug")
		if readelfBuildID(t, other) == id {
			t.Fatal("fixture: the other build has the same build-id")
		}
		root := t.TempDir()
		dbg := filepath.Join(root, "usr/lib/debug/.build-id", id[:2], id[2:]+".debug")
		os.MkdirAll(filepath.Dir(dbg), 0o755)
		if err := os.Link(other+".debug", dbg); err != nil {
			t.Fatal(err)
		}
		e, err := Open(path, Options{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		if e.HasSymtab() {
			t.Errorf("a debug file with another build-id was used")
		}
	})
	t.Run("debuglink", func(t *testing.T) {
		d := t.TempDir()
		run(t, dir, "cp", "prog", "prog.debug", d)
		run(t, d, "objcopy", "--add-gnu-debuglink=prog.debug", "prog")
		e, err := Open(filepath.Join(d, "prog"), Options{Root: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if e.DebugFile != filepath.Join(d, "prog.debug") {
			t.Fatalf("DebugFile = %q", e.DebugFile)
		}
	})
}

func TestCache(t *testing.T) {
	dir := t.TempDir()
	path := build(t, dir, "prog", "-fpie", "-pie")
	c := NewCache(Options{})
	a, err := c.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Open(path)
	if err != nil || a != b {
		t.Fatalf("second Open = %p, %v; want the cached %p", b, err, a)
	}
	// Concurrent first opens of one file share a single parse.
	c2 := NewCache(Options{})
	got := make(chan *ELF, 8)
	for i := 0; i < 8; i++ {
		go func() {
			e, err := c2.Open(path)
			if err != nil {
				t.Error(err)
			}
			got <- e
		}()
	}
	first := <-got
	for i := 1; i < 8; i++ {
		if e := <-got; e != first {
			t.Errorf("concurrent opens returned different parses")
		}
	}
	// Another name for the same inode hits the cache too.
	if err := os.Link(path, path+".hard"); err != nil {
		t.Fatal(err)
	}
	if h, _ := c.Open(path + ".hard"); h != a {
		t.Errorf("hard link parsed again")
	}
	// A replaced file (new inode) is parsed again.
	build(t, dir, "prog2", "-fno-pie", "-no-pie")
	if err := os.Rename(filepath.Join(dir, "prog2"), path); err != nil {
		t.Fatal(err)
	}
	d, err := c.Open(path)
	if err != nil || d == a || d.Type != elf.ET_EXEC {
		t.Errorf("replaced file: %+v, %v", d, err)
	}
	if _, err := c.Open(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("Open of a missing file succeeded")
	}
	if n := c.Len(); n != 2 {
		t.Errorf("cache holds %d files, want 2", n)
	}
}

func TestMalformed(t *testing.T) {
	dir := t.TempDir()
	path := build(t, dir, "prog", "-fpie", "-pie")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("this is not an ELF file at all, just words"),
		"truncated": good[:200],
		"object":    nil, // filled below
	} {
		if name == "object" {
			run(t, dir, "gcc", "-c", "a.c", "-o", "a.o")
			b, _ = os.ReadFile(filepath.Join(dir, "a.o"))
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		if _, err := Open(p, Options{}); err == nil {
			t.Errorf("%s: Open succeeded", name)
		}
	}
}

// FuzzOpen mutates a real executable: Open must return an error or a result, never panic.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	path := build(f, dir, "prog", "-fpie", "-pie")
	good, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, uint(0), byte(0))
	f.Fuzz(func(t *testing.T, b []byte, at uint, val byte) {
		if len(b) > 0 {
			b = append([]byte(nil), b...)
			b[at%uint(len(b))] ^= val
		}
		p := filepath.Join(t.TempDir(), "f")
		os.WriteFile(p, b, 0o644)
		if e, err := Open(p, Options{Root: "/nonexistent"}); err == nil {
			e.Lookup("helper", 1)
			e.LookupFunc("main", 0)
			e.Dynamic("printf")
			e.PLT("printf")
		}
	})
}

// BenchmarkOpenLibc is a cold parse of the system libc (with its debuginfo
// .symtab when /usr/lib/debug has it).
func BenchmarkOpenLibc(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		e, err := Open(libc, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			b.ReportMetric(float64(e.Len()), "symtab-syms")
		}
	}
}

// BenchmarkOpenLibcDynsymOnly is a cold parse without debuginfo.
func BenchmarkOpenLibcDynsymOnly(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Open(libc, Options{Root: "/nonexistent"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCacheOpenWarm is the per-process cost when many processes map libc.
func BenchmarkCacheOpenWarm(b *testing.B) {
	c := NewCache(Options{})
	if _, err := c.Open(libc); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Open(libc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	e, err := Open(libc, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := e.Dynamic("printf"); !ok {
			b.Fatal("no printf")
		}
		if _, err := e.Lookup("malloc", 0); err != nil {
			b.Fatal(err)
		}
	}
}
