package builder

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/rpmbuild/diff"
)

// ccProject is a small build tree like Redis with its Lua: deps/mini/src holds a
// vendored library archived by its own makefile, server/ links it by a relative path.
// mini_parse is hidden, so the linked server has it as a local symbol.
var ccProject = map[string]string{
	"deps/mini/src/mini.h":   "#define MINI_FUNC __attribute__((visibility(\"hidden\"))) extern\nint mini_eval(int x);\nMINI_FUNC int mini_parse(int x);\n",
	"deps/mini/src/mapi.c":   "#include \"mini.h\"\n__attribute__((noipa)) int mini_eval(int x) { return mini_parse(x) + 1; }\n",
	"deps/mini/src/mparse.c": "#include \"mini.h\"\n__attribute__((noipa)) int mini_parse(int x) { return x * 10; }\n",
	"server/server.c":        "#include <stdio.h>\n#include \"../deps/mini/src/mini.h\"\nint main(int argc, char **argv) { (void)argv; printf(\"%d\\n\", mini_eval(argc)); return 0; }\n",
}

// ccBuild builds the project with archive and link commands of one kind, records them
// as the capture would, then changes mparse.c (to src) and rebuilds mparse.o in place,
// as buildPatched does. It returns a build ready for the cross-check.
func ccBuild(t *testing.T, archive [][]string, link []string, src string, extra map[string]string) *build {
	t.Helper()
	d := t.TempDir()
	for n, s := range ccProject {
		write(t, filepath.Join(d, n), s)
	}
	for n, s := range extra {
		write(t, filepath.Join(d, n), s)
	}
	lib, srv := filepath.Join(d, "deps/mini/src"), filepath.Join(d, "server")
	var recs []capture.Record
	compile := func(dir, src string) capture.Record {
		obj := strings.TrimSuffix(src, ".c") + ".o"
		args := []string{"-O2", "-g", "-ffunction-sections", "-fdata-sections", "-c", "-o", obj, src}
		run(t, dir, append([]string{"gcc"}, args...)...)
		return capture.Record{Kind: capture.KindCompile, Dir: dir, Lang: "c", Args: args,
			Source: filepath.Join(dir, src), Object: filepath.Join(dir, obj)}
	}
	for _, s := range []string{"mapi.c", "mparse.c"} {
		recs = append(recs, compile(lib, s))
	}
	recs = append(recs, compile(srv, "server.c"))
	for _, c := range archive {
		run(t, lib, c...)
	}
	run(t, srv, append([]string{"gcc"}, link...)...)
	var inputs []string
	for _, a := range link[2:] {
		if !strings.HasPrefix(a, "-") {
			inputs = append(inputs, filepath.Join(srv, a))
		}
	}
	recs = append(recs, capture.Record{Kind: capture.KindLink, Dir: srv, Lang: "c", Args: link,
		Output: filepath.Join(srv, "server"), Inputs: inputs})

	work := t.TempDir()
	capDir := filepath.Join(work, "capture")
	if err := os.MkdirAll(capDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var log []byte
	for _, r := range recs {
		js, _ := json.Marshal(r)
		log = append(append(log, js...), '\n')
	}
	if err := os.WriteFile(filepath.Join(capDir, capture.LogName), log, 0o644); err != nil {
		t.Fatal(err)
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatal(err)
	}
	b := &build{work: work, logw: io.Discard, buildDir: d,
		cap:   &capture.Capture{Dir: capDir, RealCC: gcc},
		index: &debuginfo.Index{Targets: []debuginfo.Target{{Path: "/usr/bin/server"}}}}
	for i, r := range recs[:3] {
		tu := &tu{idx: i, rec: r, orig: filepath.Join(work, filepath.Base(r.Object)+".orig")}
		if err := copyFile(r.Object, tu.orig); err != nil {
			t.Fatal(err)
		}
		b.tus = append(b.tus, tu)
	}
	write(t, filepath.Join(lib, "mparse.c"), src)
	mp := b.tus[1]
	run(t, lib, append([]string{"gcc"}, mp.rec.Args...)...)
	mp.patched = filepath.Join(work, "mparse.o.patched")
	if err := copyFile(mp.rec.Object, mp.patched); err != nil {
		t.Fatal(err)
	}
	return b
}

// The cross-check on its own, for each way of making and linking the archive: when the
// only change reaches the shipped server through the archive and the differ reported
// nothing (as the name-based archive tracking did), the build fails naming the binary
// and the function; when the patch replaces it, the check passes; a change of nothing
// but a comment is "no functional change".
func TestCrossCheckArchives(t *testing.T) {
	const fixed = "#include \"mini.h\"\n__attribute__((noipa)) int mini_parse(int x) { return x * 100; }\n"
	const comment = "#include \"mini.h\"\n/* a comment */ __attribute__((noipa)) int mini_parse(int x) { return x * 10; }\n"
	kinds := []struct {
		name    string
		archive [][]string
		link    []string
		files   map[string]string
	}{
		{"ar rc + ranlib, relative path", [][]string{{"ar", "rc", "libmini.a", "mapi.o", "mparse.o"}, {"ranlib", "libmini.a"}},
			[]string{"-o", "server", "server.o", "../deps/mini/src/libmini.a"}, nil},
		{"-L/-l", [][]string{{"ar", "rcs", "libmini.a", "mapi.o", "mparse.o"}},
			[]string{"-o", "server", "server.o", "-L../deps/mini/src", "-lmini"}, nil},
		{"thin archive", [][]string{{"ar", "rcsT", "libmini.a", "mapi.o", "mparse.o"}},
			[]string{"-o", "server", "server.o", "../deps/mini/src/libmini.a"}, nil},
		{"renamed member, archive of archives", [][]string{{"cp", "mparse.o", "zz.o"}, {"ar", "rc", "libparse.a", "zz.o"},
			{"ar", "rcsT", "libmini.a", "mapi.o", "libparse.a"}},
			[]string{"-o", "server", "server.o", "../deps/mini/src/libmini.a"}, nil},
		// The capture records no inputs behind a response file; the cross-check reads it.
		{"response file", [][]string{{"ar", "rc", "libmini.a", "mapi.o", "mparse.o"}, {"ranlib", "libmini.a"}},
			[]string{"-o", "server", "@objs.rsp"}, map[string]string{"server/objs.rsp": "server.o\n'../deps/mini/src/libmini.a'\n"}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			b := ccBuild(t, k.archive, k.link, fixed, k.files)
			_, err := b.crossCheckStep(t.Context())
			if !errors.Is(err, ErrUncovered) || !strings.Contains(err.Error(), "/usr/bin/server: function mini_parse differs") {
				t.Fatalf("nothing in the patch: %v", err)
			}
			tg := &b.index.Targets[0]
			b.targets = []*targetPatch{{target: tg, changed: []string{"mini_parse"}, report: &diff.Report{}}}
			if _, err := b.crossCheckStep(t.Context()); err != nil {
				t.Fatalf("patch replacing mini_parse: %v", err)
			}
			if len(b.res.Binaries) != 1 || !b.res.Binaries[0].Checked || !b.res.Binaries[0].Patched || b.res.Binaries[0].Unchanged == 0 {
				t.Errorf("status %+v", b.res.Binaries)
			}
			if n := b.targets[0].report.Notes; len(n) != 1 || !strings.HasPrefix(n[0], "shipped /usr/bin/server: replaced mini_parse; new -;") {
				t.Errorf("report notes %q", n)
			}

			b = ccBuild(t, k.archive, k.link, comment, k.files)
			if _, err := b.crossCheckStep(t.Context()); !errors.Is(err, diff.ErrNoChange) {
				t.Fatalf("comment only: %v", err)
			}
		})
	}
}

// A shipped ELF that no recorded link makes was built by something the capture does
// not see: with nothing else changed, the build cannot call that "no functional change".
func TestCrossCheckUnseenBinary(t *testing.T) {
	const comment = "#include \"mini.h\"\n/* a comment */ __attribute__((noipa)) int mini_parse(int x) { return x * 10; }\n"
	b := ccBuild(t, [][]string{{"ar", "rcs", "libmini.a", "mapi.o", "mparse.o"}},
		[]string{"-o", "server", "server.o", "../deps/mini/src/libmini.a"}, comment, nil)
	b.index.Targets = append(b.index.Targets, debuginfo.Target{Path: "/usr/bin/prebuilt"})
	_, err := b.crossCheckStep(t.Context())
	if err == nil || errors.Is(err, diff.ErrNoChange) || !strings.Contains(err.Error(), "/usr/bin/prebuilt: no recorded link makes a file of that name") {
		t.Fatalf("got %v", err)
	}
	if len(b.res.Binaries) != 2 || b.res.Binaries[1].Checked || !strings.Contains(b.res.Binaries[1].Line(), "not cross-checked") {
		t.Errorf("status %+v", b.res.Binaries)
	}
}
