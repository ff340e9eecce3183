package builder

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// cmpSource is a program with what moves when another function changes: calls, static
// and global variables, string literals, a switch (jump table), floating constants.
const cmpSource = `#include <stdio.h>
static int counter;
int global_value = 7;
static const int table[4] = {1, 2, 3, 4};
__attribute__((noipa)) static int bump(int x) { counter += x; return counter; }
__attribute__((noipa)) int pick(int x) {
	switch (x) { case 0: return bump(1); case 1: return bump(2); case 2: return global_value;
	case 3: return table[x & 3]; case 4: return 11; default: return -1; }
}
__attribute__((noipa)) double scale(double d) { return d * 2.5 + 0.125; }
__attribute__((noipa)) const char *name(void) { return "the name"; }
__attribute__((noipa)) int limit(int x) { return x > 100 ? 100 : x; }
@EXTRA@
int main(int argc, char **argv) {
	(void)argv;
	printf("%d %f %s %d\n", pick(argc), scale(argc), name(), limit(argc)@CALL@);
	return 0;
}
`

func linkVariant(t *testing.T, dir, name, extra, call string, flags ...string) string {
	t.Helper()
	return linkEdited(t, dir, name, []string{"@EXTRA@", extra, "@CALL@", call}, flags...)
}

func linkEdited(t *testing.T, dir, name string, edits []string, flags ...string) string {
	t.Helper()
	// One source name: local symbols are known by their file.
	src := filepath.Join(dir, name, "prog.c")
	write(t, src, strings.NewReplacer(append(edits, "@EXTRA@", "", "@CALL@", "")...).Replace(cmpSource))
	out := filepath.Join(dir, name, "prog")
	args := append([]string{"-O2", "-g", "-ffunction-sections", "-fdata-sections", "-o", out, src, "-Wl,--emit-relocs"}, flags...)
	if o, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", name, err, o)
	}
	return out
}

func labels(ss []linkedSym) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return out
}

// Two links of one program: a new function placed first (so everything after it
// moves), one changed function, one function whose string literal changed. Only those
// differ; the moved ones compare equal, in a PIE and in a non-PIE executable.
func TestCompareLinked(t *testing.T) {
	for _, flags := range [][]string{{"-pie", "-fPIE"}, {"-no-pie", "-fno-PIE"}} {
		t.Run(flags[0], func(t *testing.T) {
			d := t.TempDir()
			orig := linkVariant(t, d, "orig", "", "", flags...)
			same := linkVariant(t, d, "same", "", "", flags...)
			patched := linkVariant(t, d, "patched",
				"__attribute__((noipa)) int added(int x) { return x * 3 + global_value; }", " + added(argc)", flags...)
			r, err := compareLinked(orig, same)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Changed)+len(r.New)+len(r.Removed)+len(r.ChangedData) != 0 || r.Same < 6 {
				t.Errorf("two identical links differ: %+v", r)
			}
			r, err = compareLinked(orig, patched)
			if err != nil {
				t.Fatal(err)
			}
			if got := labels(r.Changed); !reflect.DeepEqual(got, []string{"main"}) {
				t.Errorf("changed %q, want [main]", got)
			}
			if got := labels(r.New); !reflect.DeepEqual(got, []string{"added"}) {
				t.Errorf("new %q, want [added]", got)
			}
			if len(r.ChangedData) != 0 || len(r.Removed) != 0 {
				t.Errorf("data %q removed %q", labels(r.ChangedData), labels(r.Removed))
			}
		})
	}
}

// A changed string literal or constant table shows as a change of the function that
// reads it; a changed initial value of a writable variable as a data change.
func TestCompareLinkedData(t *testing.T) {
	d := t.TempDir()
	orig := linkEdited(t, d, "orig", nil)
	for _, c := range []struct {
		name    string
		edits   []string
		changed []string
		data    []string
	}{
		{"string", []string{`"the name"`, `"the game"`}, []string{"name"}, nil},
		{"table", []string{"{1, 2, 3, 4}", "{1, 2, 3, 5}"}, []string{"pick"}, nil},
		{"float", []string{"0.125", "0.25"}, []string{"scale"}, nil},
		{"global", []string{"global_value = 7", "global_value = 8"}, nil, []string{"global_value"}},
	} {
		p := linkEdited(t, d, c.name, c.edits)
		r, err := compareLinked(orig, p)
		if err != nil {
			t.Fatal(err)
		}
		if got := labels(r.Changed); !reflect.DeepEqual(got, c.changed) {
			t.Errorf("%s: changed %q, want %q", c.name, got, c.changed)
		}
		if got := labels(r.ChangedData); !reflect.DeepEqual(got, c.data) {
			t.Errorf("%s: changed data %q, want %q", c.name, got, c.data)
		}
	}
}

// BenchmarkCompareLinked compares two links of a generated program of 1500 functions
// (calls, switches, string literals, globals) that differ in one function: the
// comparison the cross-check makes per relinked binary. Goal: under a second for
// Redis's server (about 4300 functions), so under 0.35 s here.
func BenchmarkCompareLinked(b *testing.B) {
	const n = 1500
	d := b.TempDir()
	gen := func(name string, k int) string {
		var src strings.Builder
		src.WriteString("#include <stdio.h>\nint g;\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&src, "__attribute__((noipa)) int f%d(int x) { switch (x & 7) { case 0: return g + %d; case 1: return x * 3;"+
				" case 2: return puts(\"s%d\"); case 3: return x - 9; case 4: return f%d(x - 1); default: return x; } }\n", i, i, i, (i+n-1)%n)
		}
		fmt.Fprintf(&src, "int main(int c, char **v) { (void)v; return f%d(c) + %d; }\n", n-1, k)
		dir := filepath.Join(d, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "big.c"), []byte(src.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		out := filepath.Join(dir, "big")
		if o, err := exec.Command("gcc", "-O2", "-ffunction-sections", "-fdata-sections", "-o", out,
			filepath.Join(dir, "big.c"), "-Wl,--emit-relocs").CombinedOutput(); err != nil {
			b.Fatalf("gcc: %v\n%s", err, o)
		}
		return out
	}
	orig, patched := gen("orig", 1), gen("patched", 2)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := compareLinked(orig, patched)
		if err != nil {
			b.Fatal(err)
		}
		if len(r.Changed) != 1 || r.Same < n {
			b.Fatalf("changed %q, %d same", labels(r.Changed), r.Same)
		}
	}
	b.ReportMetric(n+1, "functions")
}
