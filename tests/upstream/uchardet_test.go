package upstream

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// uchardet 0.0.7 as Debian 12 ships its source: CMake builds the C++ library as a static
// archive and links it into the tool /usr/bin/uchardet.
var uchardetOrig = &debsrc.Orig{Source: "uchardet", File: "uchardet_0.0.7.orig.tar.xz",
	SHA256: "3fc79408ae1d84b406922fa9319ce005631c95ca0f34b205fad867e8b30e45b1", Env: "SYSCARE_UCHARDET_ORIG"}

const uchardetVersion = "0.0.7"

// TestUpstreamUchardetCMakeExecutable: a CMake C++ executable that links a static library
// the package builds. No upstream fix is used here (see the patch headers): the changes
// only show what syscare-build does with C++ member functions in such a program.
//
// An out-of-line member function (nsUniversalDetector::DataEnd) is replaced in the
// running tool: uchardet reads the files named on its command line one after the other,
// so with FIFOs as the files the process is alive between answers. A member function
// defined inside its class (inline, in a COMDAT group) is built into a patch too, once
// the builder proved which object's copy the binary kept.
func TestUpstreamUchardetCMakeExecutable(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	needBinaries(t)
	needTools(t, "cmake", "g++")
	pkgs := rpmbuildSpec(t, "uchardet", "uchardet.spec", uchardetOrig.Get(t, aptDir()), "uchardet-"+uchardetVersion+".tar.xz", "uchardet", uchardetVersion)

	t.Run("inline member built", func(t *testing.T) {
		const report = "_ZN23HandleUniversalDetector6ReportEPKc"
		out, rpm := syscareBuild(t, pkgs, "UC002", filepath.Join("uchardet", "inline-report-lowercase.patch"),
			fmt.Sprintf("patch-uchardet-%s-1-UC002-1-1.x86_64.rpm", uchardetVersion))
		if !strings.Contains(out, "vague-linkage "+report) {
			t.Errorf("syscare-build output does not say which copy of %s the binary kept:\n%s", report, out)
		}
		_, meta := patchDir(t, rpm)
		found := false
		for _, e := range meta.Entities {
			for _, f := range e.Functions {
				found = found || f.Name == report
			}
		}
		if !found {
			t.Errorf("no entity replaces %s: %+v", report, meta.Entities)
		}
	})

	out, rpm := syscareBuild(t, pkgs, "UC001", filepath.Join("uchardet", "us-ascii-name.patch"),
		fmt.Sprintf("patch-uchardet-%s-1-UC001-1-1.x86_64.rpm", uchardetVersion))
	const dataEnd = "_ZN19nsUniversalDetector7DataEndEv"
	for _, want := range []string{"Patch report for /usr/bin/uchardet", dataEnd + " (src/nsUniversalDetector.cpp): code changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, out)
		}
	}
	dir, meta := patchDir(t, rpm)
	if len(meta.Entities) != 1 || meta.Entities[0].TargetPath != "/usr/bin/uchardet" ||
		len(meta.Entities[0].Functions) != 1 || meta.Entities[0].Functions[0].Name != dataEnd {
		t.Fatalf("entities %+v, want /usr/bin/uchardet replacing %s", meta.Entities, dataEnd)
	}
	e := meta.Entities[0]

	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkgs.rpm, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	prodhost.Check(t, "", filepath.Join(root, "usr/bin/uchardet"))
	fifos := t.TempDir()
	var names []string
	for i := 1; i <= 3; i++ {
		p := filepath.Join(fifos, fmt.Sprint(i))
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
		names = append(names, p)
	}
	// uchardet prints with stdio and never flushes: stdbuf makes its stdout line
	// buffered on the pipe (it execs the tool, so the pid is uchardet's).
	needTools(t, "stdbuf")
	cmd := exec.Command("stdbuf", append([]string{"-oL", filepath.Join(root, "usr/bin/uchardet")}, names...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := &repl{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		defer close(r.lines)
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := stdout.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				r.lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	// feed writes one file's content; uchardet answers "<name>: <charset>" at its end.
	feed := func(i int, want string) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- os.WriteFile(names[i], []byte("plain ascii text\n"), 0o600) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("uchardet did not open %s", names[i])
		}
		if got := r.next(t, "the answer for "+names[i]); got != names[i]+": "+want {
			t.Errorf("%s: %q, want %q", names[i], got, names[i]+": "+want)
		}
	}
	pid := fmt.Sprint(cmd.Process.Pid)
	manage := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(loaderBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage %q: %v\n%s", args, err, out)
		}
	}
	feed(0, "ASCII")
	manage("patch", "--pid", pid, "--uuid", e.UUID, "--patch", filepath.Join(dir, e.File))
	feed(1, "US-ASCII")
	manage("unpatch", "--pid", pid, "--uuid", e.UUID)
	feed(2, "ASCII")
}
