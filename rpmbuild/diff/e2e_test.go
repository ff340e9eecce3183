package diff

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// symtabLocator answers Locator questions from an ELF's .symtab, telling same-named
// local symbols apart by the STT_FILE symbol that precedes them.
type symtabLocator struct{ syms []elf.Symbol }

func (l symtabLocator) Pos(name, file string, isFunc bool) (uint64, error) {
	var n, mine uint64
	cur := ""
	for _, s := range l.syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FILE {
			cur = s.Name
			continue
		}
		if s.Name != name || (isFunc && elf.ST_TYPE(s.Info) != elf.STT_FUNC) {
			continue
		}
		n++
		if cur == file && mine == 0 {
			mine = n
		}
	}
	if n <= 1 {
		return 0, nil
	}
	return mine, nil
}

// e2eCase is a two-file program: main.c prints what lib.c computes, in a loop.
type e2eCase struct {
	main, orig, fixed string
	shared            bool // lib.c goes into liblib.so (-fPIC), patched with --binary
	changed           []string
	before, after     string // a line printed before and after the patch
}

// TestPatchRunningProcess builds two-file programs the way the builder does, diffs a
// fix of one file, and applies the emitted object to the running program with
// upatch-manage, then removes it again.
func TestPatchRunningProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("ptrace of a child needs root here (tests run as root in CI)")
	}
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
	for name, c := range map[string]e2eCase{"statics": statics, "inlined": inlined, "shared-library": shared, "jump-table": table} {
		t.Run(name, func(t *testing.T) { runE2E(t, manage, c) })
	}
}

func runE2E(t *testing.T, manage string, c e2eCase) {
	dir := t.TempDir()
	pic := "-fPIE"
	if c.shared {
		pic = "-fPIC"
	}
	cc := func(d, name, src, pic string) string {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name+".c"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-gdwarf", pic, "-o", name+".o", name+".c")
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
		return filepath.Join(d, name+".o")
	}
	mo := cc(dir, "main", c.main, "-fPIE")
	lo := cc(dir, "lib", c.orig, pic)
	lp := cc(filepath.Join(dir, "fixed"), "lib", c.fixed, pic)
	prog := filepath.Join(dir, "prog")
	target := prog
	link := []string{"-pie", "-Wl,--build-id", "-o", prog, mo, lo}
	if c.shared {
		target = filepath.Join(dir, "liblib.so")
		if out, err := exec.Command("gcc", "-shared", "-Wl,--build-id", "-o", target, lo).CombinedOutput(); err != nil {
			t.Fatalf("link library: %v\n%s", err, out)
		}
		link = []string{"-pie", "-o", prog, mo, target, "-Wl,-rpath," + dir}
	}
	if out, err := exec.Command("gcc", link...).CombinedOutput(); err != nil {
		t.Fatalf("link: %v\n%s", err, out)
	}
	ef, err := elf.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := ef.Symbols()
	ef.Close()
	if err != nil {
		t.Fatal(err)
	}
	ob, _ := os.ReadFile(lo)
	pb, _ := os.ReadFile(lp)
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{Locator: symtabLocator{syms}, AliasPrefix: "__lib_"})
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
	patch := filepath.Join(dir, "patch.o")
	if err := os.WriteFile(patch, b, 0o644); err != nil {
		t.Fatal(err)
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
	args := []string{"patch", "--pid", itoa(p.Process.Pid), "--patch", patch, "--uuid", "e2e-diff", "--force"}
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
