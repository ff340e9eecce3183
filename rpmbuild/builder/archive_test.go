package builder

import (
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/syscare/syscare/rpmbuild/capture"
)

// The linker takes an archive member only if the link needs it: Lua links liblua.a into
// lua and luac, but luac leaves lutf8lib.o out, and a patch of lutf8lib.c must not be
// bound to luac.
func TestFinalsSkipsUnusedArchiveMembers(t *testing.T) {
	d := t.TempDir()
	write(t, filepath.Join(d, "used.c"), "int used(void) { return 1; }\n")
	write(t, filepath.Join(d, "unused.c"), "int unused(void) { return 2; }\n")
	write(t, filepath.Join(d, "a.c"), "int used(void);\nint unused(void);\nint main(void) { return used() + unused(); }\n")
	write(t, filepath.Join(d, "b.c"), "int used(void);\nint main(void) { return used(); }\n")
	for _, c := range [][]string{
		{"gcc", "-c", "used.c", "unused.c", "a.c", "b.c"},
		{"ar", "rc", "libx.a", "used.o", "unused.o"},
		{"gcc", "-o", "a", "a.o", "libx.a"},
		{"gcc", "-o", "b", "b.o", "libx.a"},
	} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", c, err, out)
		}
	}
	p := func(s string) string { return filepath.Join(d, s) }
	recs := []capture.Record{
		{Kind: capture.KindCompile, Object: p("used.o")},
		{Kind: capture.KindCompile, Object: p("unused.o")},
		{Kind: capture.KindCompile, Object: p("a.o")},
		{Kind: capture.KindCompile, Object: p("b.o")},
		{Kind: capture.KindLink, Output: p("a"), Inputs: []string{p("a.o"), p("libx.a")}},
		{Kind: capture.KindLink, Output: p("b"), Inputs: []string{p("b.o"), p("libx.a")}},
	}
	g := newLinkGraph(recs, contents(recs, nil))
	for obj, want := range map[string][]string{
		"used.o": {p("a"), p("b")}, "unused.o": {p("a")}, "b.o": {p("b")},
	} {
		got := g.Finals(p(obj))
		if len(got) == 2 && got[0] > got[1] {
			got[0], got[1] = got[1], got[0]
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Finals(%s) = %q, want %q", obj, got, want)
		}
	}
}
