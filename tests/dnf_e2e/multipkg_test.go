package dnfe2e

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// lines follows the last line a process prints.
type lines struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	last string
	n    int
}

func startLines(t testing.TB, cmd *exec.Cmd) *lines {
	t.Helper()
	l := &lines{cmd: cmd}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.mu.Lock()
			l.last, l.n = sc.Text(), l.n+1
			l.mu.Unlock()
		}
		io.Copy(io.Discard, out)
	}()
	return l
}

// waitFor waits until the process prints want in fresh output.
func (l *lines) waitFor(t testing.TB, want string) {
	t.Helper()
	l.mu.Lock()
	start := l.n
	l.mu.Unlock()
	var last string
	// A hang guard: the program prints every few ms, a loaded machine stretches that.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		l.mu.Lock()
		var n int
		last, n = l.last, l.n
		l.mu.Unlock()
		if n > start+1 && last == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s prints %q, want %q", filepath.Base(l.cmd.Path), last, want)
}

// The scmulti fixture (tests/fixtures/build/scmulti): one source package, two binary
// packages (scmulti: /usr/bin/scmulti, installed under another name than the build's,
// and /usr/bin/scmulti-tool, linked during %install; scmulti-libs: libscm.so.1, which
// both programs call), one -debuginfo package. fix-both.patch changes a function in each
// of the three ELF files. syscare build must make one patch RPM per binary package,
// each requiring its exact target; dnf hotpatch upgrade installs both and the helper
// applies them in its one Upgrade call; removing them brings the old behaviour back.
// The host is a production one: stripped targets, no -debuginfo installed.
func TestTwoBinaryPackagesOneFix(t *testing.T) {
	e := setup(t)
	fix := filepath.Join(e.repoDir, "tests/fixtures/build/scmulti")

	// The fixture's source, binary and -debuginfo RPMs, as a distribution builds them.
	top := filepath.Join(e.dir, "scmulti")
	for _, d := range []string{"SOURCES", "SPECS"} {
		os.MkdirAll(filepath.Join(top, d), 0o755)
	}
	run(t, fix, nil, "tar", "-czf", filepath.Join(top, "SOURCES/scmulti-1.0.tar.gz"), "--transform", "s,^src,scmulti-1.0,", "src")
	run(t, fix, nil, "cp", "scmulti.spec", filepath.Join(top, "SPECS"))
	run(t, top, nil, "rpmbuild", "-ba", "--nodeps", "--quiet", "--define", "_topdir "+top, filepath.Join(top, "SPECS/scmulti.spec"))
	rpm := func(p string) string { return filepath.Join(top, p) }
	for _, p := range []string{"RPMS/x86_64/scmulti-1.0-1.x86_64.rpm", "RPMS/x86_64/scmulti-libs-1.0-1.x86_64.rpm"} {
		run(t, e.dir, nil, "cp", rpm(p), e.repo)
	}
	run(t, e.dir, nil, "createrepo_c", "-q", e.repo)

	// syscare build from the source RPM and the one -debuginfo RPM.
	run(t, e.repoDir, nil, "go", "build", "-o", e.bin+"/", "./rpmbuild/cmd/syscare-build")
	out := filepath.Join(e.dir, "patches")
	built := run(t, e.dir, nil, filepath.Join(e.bin, "syscare-build"), "--patch-name", "HP1",
		"--source", rpm("SRPMS/scmulti-1.0-1.src.rpm"), "--debuginfo", rpm("RPMS/x86_64/scmulti-debuginfo-1.0-1.x86_64.rpm"),
		"--patch", filepath.Join(fix, "fix-both.patch"), "--output", out, "--jobs", "2")
	t.Logf("syscare-build:\n%s", built)
	for _, w := range []string{
		"/usr/bin/scmulti: replaced own_value;",
		"/usr/bin/scmulti-tool: replaced tool_value;",
		"/usr/lib64/libscm.so.1: replaced scm_value;",
	} {
		if !strings.Contains(built, w) {
			t.Errorf("syscare-build output lacks %q", w)
		}
	}
	want := map[string]string{
		"patch-scmulti-1.0-1-HP1-1-1.x86_64.rpm":      "scmulti = 1.0-1",
		"patch-scmulti-libs-1.0-1-HP1-1-1.x86_64.rpm": "scmulti-libs = 1.0-1",
	}
	var patches []string
	for name, req := range want {
		p := filepath.Join(out, name)
		reqs := run(t, e.dir, nil, "rpm", "-qp", "--requires", p)
		if !slices.Contains(strings.Split(reqs, "\n"), req) {
			t.Fatalf("%s requires\n%s\nwant %q", name, reqs, req)
		}
		patches = append(patches, p)
	}
	if t.Failed() {
		t.FailNow()
	}
	e.syscare(append(append([]string{"repo", "add", e.repo}, patches...), "--advisory", "SA-2026-0014", "--cve", "CVE-2026-0014")...)

	e.mustDNF("-q", "install", "scmulti", "scmulti-libs", "syscare")
	for _, f := range []string{"usr/bin/scmulti", "usr/bin/scmulti-tool", "usr/lib64/libscm.so.1"} {
		prodhost.Check(t, e.root, filepath.Join(e.root, f))
	}
	env := append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(e.root, "usr/lib64"))
	start := func() (*lines, *lines) {
		prog := exec.Command(filepath.Join(e.root, "usr/bin/scmulti"))
		prog.Env = env
		tool := exec.Command(filepath.Join(e.root, "usr/bin/scmulti-tool"))
		tool.Env = env
		p, tl := startLines(t, prog), startLines(t, tool)
		p.waitFor(t, "multi 1 10")
		tl.waitFor(t, "tool 100 10")
		return p, tl
	}

	// Together or not at all: with /usr/bin/scmulti not the build the patch was made
	// for (its build-id changed), the patch of scmulti fails, and the helper's one
	// Upgrade rolls back the patch of scmulti-libs too, which alone would have applied.
	prog := filepath.Join(e.root, "usr/bin/scmulti")
	orig, err := os.ReadFile(prog)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elfsafe.Open(prog)
	if err != nil {
		t.Fatal(err)
	}
	id, err := elfsafe.BuildID(f.File)
	f.Close()
	at := bytes.Index(orig, id)
	if err != nil || len(id) == 0 || at < 0 {
		t.Fatalf("build-id of scmulti: %x at %d, %v", id, at, err)
	}
	other := slices.Clone(orig)
	other[at] ^= 0xff
	if err := os.WriteFile(prog, other, 0o755); err != nil {
		t.Fatal(err)
	}
	p, tl := start()
	o, eo, code := e.dnf("hotpatch", "upgrade")
	if code == 0 || !strings.Contains(o+eo, "build-id") {
		t.Fatalf("upgrade with a foreign scmulti: exit %d, want a failure naming the build-id\n%s%s", code, o, eo)
	}
	t.Logf("dnf hotpatch upgrade with a foreign scmulti (exit %d):\n%s", code, eo)
	p.waitFor(t, "multi 1 10")
	tl.waitFor(t, "tool 100 10")
	for _, n := range []string{"patch-scmulti-1.0-1-HP1", "patch-scmulti-libs-1.0-1-HP1"} {
		if e.installed(n) {
			t.Errorf("%s stays installed after the failed upgrade", n)
		}
	}
	for _, l := range []*lines{p, tl} {
		l.cmd.Process.Kill()
		l.cmd.Wait()
	}
	if err := os.WriteFile(prog, orig, 0o755); err != nil {
		t.Fatal(err)
	}

	p, tl = start()
	since := len(e.bus.Log.String())
	upg := e.mustDNF("hotpatch", "upgrade")
	t.Logf("dnf hotpatch upgrade:\n%s", upg)
	// Both patches, each on its own target package, in the one Upgrade call.
	p.waitFor(t, "multi 2 20")
	tl.waitFor(t, "tool 200 20")
	if calls := changing(e.helperCalls(since)); !slices.Equal(calls, []string{"Upgrade"}) {
		t.Errorf("the upgrade changed the system with %v, want one Upgrade call", calls)
	}
	rows := e.list("--installed")
	for _, n := range []string{"patch-scmulti-1.0-1-HP1", "patch-scmulti-libs-1.0-1-HP1"} {
		if rows[n].State != "ACTIVED" {
			t.Errorf("%s: %+v", n, rows)
		}
	}

	e.mustDNF("hotpatch", "remove", "patch-scmulti-1.0-1-HP1", "patch-scmulti-libs-1.0-1-HP1")
	p.waitFor(t, "multi 1 10")
	tl.waitFor(t, "tool 100 10")
	for _, n := range []string{"patch-scmulti-1.0-1-HP1", "patch-scmulti-libs-1.0-1-HP1"} {
		if e.installed(n) {
			t.Errorf("%s stays installed after remove", n)
		}
	}
}
