package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/tests/testenv"
)

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Changed-TU detection: a header change reaches every unit that included it, and
// only those.
func TestChangedTUs(t *testing.T) {
	d := t.TempDir()
	files := map[string]string{"a.c": "a", "b.c": "b", "c.c": "c", "h.h": "h1", "g.h": "g"}
	for n, s := range files {
		write(t, filepath.Join(d, n), s)
	}
	mk := func(src string, deps ...string) *tu {
		tu := &tu{rec: capture.Record{Source: filepath.Join(d, src)}, hashes: map[string]string{}}
		for _, p := range append([]string{src}, deps...) {
			tu.hashes[filepath.Join(d, p)] = hashFile(filepath.Join(d, p))
		}
		return tu
	}
	tus := []*tu{mk("a.c", "h.h"), mk("b.c", "g.h"), mk("c.c", "h.h", "g.h")}
	if got := changedTUs(tus); len(got) != 0 {
		t.Fatalf("nothing changed, got %d", len(got))
	}
	names := func(ts []*tu) []string {
		var out []string
		for _, x := range ts {
			out = append(out, filepath.Base(x.rec.Source))
		}
		sort.Strings(out)
		return out
	}
	write(t, filepath.Join(d, "h.h"), "h2")
	if got := names(changedTUs(tus)); !reflect.DeepEqual(got, []string{"a.c", "c.c"}) {
		t.Errorf("after a header change: %q", got)
	}
	write(t, filepath.Join(d, "h.h"), "h1")
	write(t, filepath.Join(d, "b.c"), "b2")
	if got := names(changedTUs(tus)); !reflect.DeepEqual(got, []string{"b.c"}) {
		t.Errorf("after a source change: %q", got)
	}
	os.Remove(filepath.Join(d, "g.h"))
	if got := names(changedTUs(tus)); !reflect.DeepEqual(got, []string{"b.c", "c.c"}) {
		t.Errorf("after a header removal: %q", got)
	}
}

// Objects reach their ELF through archives and relocatable links, never through a
// shared library into the programs linking it.
func TestLinkGraph(t *testing.T) {
	d := t.TempDir()
	write(t, filepath.Join(d, "x.c"), "int x(void) { return 1; }\n")
	write(t, filepath.Join(d, "sub/y.c"), "int y(void) { return 2; }\n")
	for _, c := range [][]string{{"gcc", "-c", "x.c", "-o", "x.o"}, {"gcc", "-c", "sub/y.c", "-o", "sub/y.o"},
		{"ar", "rcs", "libz.a", "x.o", "sub/y.o"}} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = d
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", c, err, out)
		}
	}
	members, err := readArchive(filepath.Join(d, "libz.a"))
	if err != nil || len(members) != 2 || members[0].Name != "x.o" || members[1].Name != "y.o" {
		t.Fatalf("archive members %+v %v", members, err)
	}
	p := func(s string) string { return filepath.Join(d, s) }
	recs := []capture.Record{
		{Kind: capture.KindCompile, Object: p("x.o")},
		{Kind: capture.KindCompile, Object: p("sub/y.o")},
		{Kind: capture.KindCompile, Object: p("m.o")},
		{Kind: capture.KindCompile, Object: p("s.o")},
		{Kind: capture.KindLink, Output: p("libs.so"), Args: []string{"-shared"}, Inputs: []string{p("s.o"), p("libz.a")}},
		{Kind: capture.KindLink, Output: p("part.o"), Args: []string{"-r", "-o", "part.o", "m.o"}, Inputs: []string{p("m.o")}},
		{Kind: capture.KindLink, Output: p("prog"), Inputs: []string{p("part.o"), p("libs.so")}},
	}
	g := newLinkGraph(recs, contents(recs, nil))
	for obj, want := range map[string][]string{
		"x.o": {p("libs.so")}, "sub/y.o": {p("libs.so")}, "s.o": {p("libs.so")}, "m.o": {p("prog")},
	} {
		if got := g.Finals(p(obj)); !reflect.DeepEqual(got, want) {
			t.Errorf("Finals(%s) = %q, want %q", obj, got, want)
		}
	}
	if _, err := parseArchiveData([]byte("!<arch>\nshort"), d, 0, true); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("a truncated archive header: %v", err)
	}
	hdr := fmt.Sprintf("%-16s%-12s%-6s%-6s%-8s%-10s`\n", "x.o/", "0", "0", "0", "644", "99999")
	if _, err := parseArchiveData([]byte("!<arch>\n"+hdr+"abc"), d, 0, true); err == nil {
		t.Error("an archive member larger than the file was accepted")
	}
}

// The compiler check reads DW_AT_producer: a debug file made by "another" GCC is refused.
func TestCheckCompiler(t *testing.T) {
	d := t.TempDir()
	write(t, filepath.Join(d, "a.c"), "int main(void) { return 0; }\n")
	prog := filepath.Join(d, "a")
	if out, err := exec.Command("gcc", "-g", "-o", prog, filepath.Join(d, "a.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	b := &build{index: &debuginfo.Index{Targets: []debuginfo.Target{{Path: "/usr/bin/a", DebugFile: prog}}}, logw: os.Stderr}
	if err := b.checkCompiler(context.Background()); err != nil {
		t.Fatalf("same compiler refused: %v", err)
	}
	vers, _ := exec.Command("gcc", "-dumpfullversion").Output()
	v := bytes.TrimSpace(vers)
	data, _ := os.ReadFile(prog)
	other := bytes.Repeat([]byte("9"), len(v))
	testenv.Require(t, bytes.Contains(data, append([]byte("GNU C17 "), v...)),
		fmt.Sprintf("producer string not found verbatim in %s (compressed DWARF?)", prog))
	data = bytes.ReplaceAll(data, append([]byte("GNU C17 "), v...), append([]byte("GNU C17 "), other...))
	os.WriteFile(prog, data, 0o755)
	err := b.checkCompiler(context.Background())
	if !errors.Is(err, ErrCompilerMismatch) {
		t.Fatalf("different producer: %v", err)
	}
	t.Log(err)
}
