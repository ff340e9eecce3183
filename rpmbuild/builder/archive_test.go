package builder

import (
	"fmt"
	"os"
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

func run(t *testing.T, dir string, c ...string) {
	t.Helper()
	cmd := exec.Command(c[0], c[1:]...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%q: %v\n%s", c, err, out)
	}
}

// Archives are read back by content: regular and thin archives, a thin archive that
// takes in another archive ("/name:offset" members), a regular archive holding a whole
// archive, long member names; and an archive written back links after ranlib.
func TestReadArchive(t *testing.T) {
	d := t.TempDir()
	write(t, filepath.Join(d, "a.c"), "int a(void) { return 1; }\n")
	write(t, filepath.Join(d, "b.c"), "int b(void) { return 2; }\n")
	write(t, filepath.Join(d, "a_member_with_a_long_name.c"), "int l(void) { return 3; }\n")
	write(t, filepath.Join(d, "m.c"), "int a(void); int b(void); int l(void);\nint main(void) { return a() + b() + l(); }\n")
	run(t, d, "gcc", "-c", "a.c", "b.c", "a_member_with_a_long_name.c", "m.c")
	run(t, d, "ar", "rc", "libinner.a", "b.o")
	run(t, d, "ar", "rc", "libreg.a", "a.o", "b.o", "a_member_with_a_long_name.o")
	run(t, d, "ranlib", "libreg.a")
	run(t, d, "ar", "rcT", "libthin.a", "a.o", "a_member_with_a_long_name.o", "libinner.a")
	run(t, d, "ar", "rc", "libwhole.a", "a.o", "libinner.a")
	hash := func(n string) string {
		data, err := os.ReadFile(filepath.Join(d, n))
		if err != nil {
			t.Fatal(err)
		}
		return sha256Hex(data)
	}
	type m struct{ name, hash, path string }
	got := func(path string, flatten bool) []m {
		ms, err := readArchiveAs(filepath.Join(d, path), flatten)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var out []m
		for _, x := range ms {
			out = append(out, m{filepath.Base(x.Name), x.Hash, x.Path})
		}
		return out
	}
	a, b, l := hash("a.o"), hash("b.o"), hash("a_member_with_a_long_name.o")
	for _, c := range []struct {
		file    string
		flatten bool
		want    []m
	}{
		{"libreg.a", true, []m{{"a.o", a, ""}, {"b.o", b, ""}, {"a_member_with_a_long_name.o", l, ""}}},
		{"libthin.a", true, []m{{"a.o", a, filepath.Join(d, "a.o")},
			{"a_member_with_a_long_name.o", l, filepath.Join(d, "a_member_with_a_long_name.o")}, {"b.o", b, ""}}},
		{"libwhole.a", true, []m{{"a.o", a, ""}, {"b.o", b, ""}}},
		{"libwhole.a", false, []m{{"a.o", a, ""}, {"libinner.a", hash("libinner.a"), ""}}},
	} {
		if g := got(c.file, c.flatten); !reflect.DeepEqual(g, c.want) {
			t.Errorf("%s (flatten %v):\n got %v\nwant %v", c.file, c.flatten, g, c.want)
		}
	}

	// Written back (members in order, long names kept) and indexed, it links.
	ms, err := readArchive(filepath.Join(d, "libthin.a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeArchive(filepath.Join(d, "libcopy.a"), ms); err != nil {
		t.Fatal(err)
	}
	run(t, d, "ranlib", "libcopy.a")
	run(t, d, "gcc", "-o", "m", "m.o", "libcopy.a")
	if g := got("libcopy.a", true); len(g) != 3 || g[0].hash != a || g[1].name != "a_member_with_a_long_name.o" || g[2].hash != b {
		t.Errorf("written archive reads back as %v", g)
	}

	for _, bad := range []string{"not an archive", "!<arch>\nshort", "!<thin>\n" + fmt.Sprintf("%-16s%-12s%-6s%-6s%-8s%-10s`\n", "/7", "0", "0", "0", "644", "4")} {
		if _, err := parseArchiveData([]byte(bad), d, 0, true); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// A member counts by its content: an object archived under another name (a copy
// made by the makefile) still reaches the program, and one of two objects with the
// same name in two directories reaches only the program whose archive holds it.
func TestFinalsByContent(t *testing.T) {
	d := t.TempDir()
	write(t, filepath.Join(d, "x/util.c"), "int util_x(void) { return 1; }\n")
	write(t, filepath.Join(d, "y/util.c"), "int util_y(void) { return 2; }\n")
	write(t, filepath.Join(d, "p.c"), "int util_x(void);\nint main(void) { return util_x(); }\n")
	write(t, filepath.Join(d, "q.c"), "int util_y(void);\nint main(void) { return util_y(); }\n")
	run(t, d, "gcc", "-c", "-o", "x/util.o", "x/util.c")
	run(t, d, "gcc", "-c", "-o", "y/util.o", "y/util.c")
	run(t, d, "gcc", "-c", "p.c", "q.c")
	run(t, d, "cp", "x/util.o", "renamed.o")
	run(t, d, "ar", "rc", "libp.a", "renamed.o")
	run(t, d, "ranlib", "libp.a")
	run(t, d, "mkdir", "lib")
	run(t, d, "ar", "rc", "lib/libq.a", "y/util.o")
	p := func(s string) string { return filepath.Join(d, s) }
	run(t, d, "gcc", "-o", "p", "p.o", "libp.a")
	run(t, d, "gcc", "-o", "q", "q.o", "-Llib", "-lq")
	recs := []capture.Record{
		{Kind: capture.KindCompile, Object: p("x/util.o")},
		{Kind: capture.KindCompile, Object: p("y/util.o")},
		{Kind: capture.KindLink, Output: p("p"), Inputs: []string{p("p.o"), p("libp.a")}},
		{Kind: capture.KindLink, Output: p("q"), Inputs: []string{p("q.o"), p("lib/libq.a")}},
	}
	g := newLinkGraph(recs, contents(recs, nil))
	if got := g.Finals(p("x/util.o")); !reflect.DeepEqual(got, []string{p("p")}) {
		t.Errorf("x/util.o goes into %q, want p", got)
	}
	if got := g.Finals(p("y/util.o")); !reflect.DeepEqual(got, []string{p("q")}) {
		t.Errorf("y/util.o goes into %q, want q", got)
	}
}

// A hidden global (Lua's LUAI_FUNC) is a local symbol of the program that links it:
// the member still counts for it. A static function of the same name in another
// program, which leaves the member out, does not make it count there.
func TestFinalsHiddenGlobal(t *testing.T) {
	d := t.TempDir()
	write(t, filepath.Join(d, "hid.c"), "__attribute__((visibility(\"hidden\"))) int hfun(int x) { return x + 1; }\n")
	write(t, filepath.Join(d, "a.c"), "int hfun(int);\nint main(int c, char **v) { (void)v; return hfun(c); }\n")
	write(t, filepath.Join(d, "b.c"), "__attribute__((noipa)) static int hfun(int x) { return x + 2; }\nint main(int c, char **v) { (void)v; return hfun(c); }\n")
	run(t, d, "gcc", "-O2", "-c", "hid.c", "a.c", "b.c")
	run(t, d, "ar", "rc", "libh.a", "hid.o")
	run(t, d, "ranlib", "libh.a")
	run(t, d, "gcc", "-o", "a", "a.o", "libh.a")
	run(t, d, "gcc", "-o", "b", "b.o", "libh.a")
	p := func(s string) string { return filepath.Join(d, s) }
	recs := []capture.Record{
		{Kind: capture.KindCompile, Object: p("hid.o")},
		{Kind: capture.KindLink, Output: p("a"), Inputs: []string{p("a.o"), p("libh.a")}},
		{Kind: capture.KindLink, Output: p("b"), Inputs: []string{p("b.o"), p("libh.a")}},
	}
	g := newLinkGraph(recs, contents(recs, nil))
	if got := g.Finals(p("hid.o")); !reflect.DeepEqual(got, []string{p("a")}) {
		t.Errorf("hid.o goes into %q, want only a", got)
	}
}
