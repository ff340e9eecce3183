package diff

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
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

// TestPatchRunningProcess builds a two-file PIE program the way the builder does,
// diffs a fix of one file, and applies the emitted object to the running program with
// upatch-manage: the fix reaches a static function, a static variable, a
// function-static counter (all through .upatch.syms aliases) and a changed static
// const table (shipped as a new copy).
func TestPatchRunningProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("ptrace of a child needs root here (tests run as root in CI)")
	}
	dir := t.TempDir()
	mainSrc := `#include <stdio.h>
#include <unistd.h>
int compute(int);
int main(void) {
	for (;;) { printf("%d\n", compute(2)); fflush(stdout); usleep(10000); }
}
`
	orig := `static int calls;
static const int tbl[4] = { 10, 20, 30, 40 };
static __attribute__((noipa)) int scale(int x) { return x * 3; }
__attribute__((noipa)) int compute(int x) {
	static int n;
	n++;
	calls++;
	return scale(x) + tbl[x & 3] - 36;
}
`
	fixed := `static int calls;
static const int tbl[4] = { 10, 20, 31, 40 };
static __attribute__((noipa)) int scale(int x) { return x * 3; }
__attribute__((noipa)) int compute(int x) {
	static int n;
	n++;
	calls++;
	return scale(x) + tbl[x & 3] + 1000 + (n > 1 && calls > 1);
}
`
	cc := func(d, name, src string) string {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name+".c"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-gdwarf", "-fPIE", "-o", name+".o", name+".c")
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc: %v\n%s", err, out)
		}
		return filepath.Join(d, name+".o")
	}
	mo := cc(dir, "main", mainSrc)
	lo := cc(dir, "lib", orig)
	lp := cc(filepath.Join(dir, "fixed"), "lib", fixed)
	prog := filepath.Join(dir, "prog")
	if out, err := exec.Command("gcc", "-pie", "-Wl,--build-id", "-o", prog, mo, lo).CombinedOutput(); err != nil {
		t.Fatalf("link: %v\n%s", err, out)
	}
	ef, err := elf.Open(prog)
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
	if got := r.Changed(); len(got) != 1 || got[0] != "compute" {
		t.Fatalf("changed %q, want compute\n%s", got, r)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	patch := filepath.Join(dir, "patch.o")
	if err := os.WriteFile(patch, b, 0o644); err != nil {
		t.Fatal(err)
	}
	manage := filepath.Join(dir, "upatch-manage")
	build := exec.Command("go", "build", "-o", manage, "github.com/syscare/syscare/runtime/cmd/upatch-manage")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build upatch-manage: %v\n%s", err, out)
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
	waitFor("0")
	pid := itoa(p.Process.Pid)
	out, err := exec.Command(manage, "patch", "--pid", pid, "--patch", patch, "--uuid", "e2e-diff", "--force").CombinedOutput()
	if err != nil {
		t.Fatalf("upatch-manage patch: %v\n%s", err, out)
	}
	// 6 + 31 + 1000 + 1: the new table, and the process's own counters (both > 1)
	waitFor("1038")
	out, err = exec.Command(manage, "unpatch", "--pid", pid, "--uuid", "e2e-diff").CombinedOutput()
	if err != nil {
		t.Fatalf("upatch-manage unpatch: %v\n%s", err, out)
	}
	waitFor("0")
}
