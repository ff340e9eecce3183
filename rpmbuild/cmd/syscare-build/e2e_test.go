package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/rpmbuild/internal/testpkg"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// The tests run the real binaries: syscare-build (this command) and the loader,
// upatch-manage, both built from the tree once per test binary.
var (
	binDir       string
	builderBin   string
	loader       string
	loaderMissed string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "syscare-build-test-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	builderBin = filepath.Join(dir, "syscare-build")
	if out, err := exec.Command(goTool, "build", "-o", builderBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build syscare-build: %v\n%s", err, out)
		os.Exit(1)
	}
	loader = filepath.Join(dir, "upatch-manage")
	if out, err := exec.Command(goTool, "build", "-o", loader, "github.com/syscare/syscare/runtime/cmd/upatch-manage").CombinedOutput(); err != nil {
		loaderMissed = fmt.Sprintf("upatch-manage does not build: %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type runResult struct {
	stdout, stderr string
	code           int
}

func runBuilder(t testing.TB, env []string, args ...string) runResult {
	t.Helper()
	cmd := exec.Command(builderBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return runResult{o.String(), e.String(), code}
}

func fixturePatch(t testing.TB, name string) string {
	return filepath.Join(testpkg.Fixture(t, "scdemo"), name)
}

type lines struct {
	ch chan string
}

// lineWait bounds a wait for a line the program prints every few milliseconds (or
// its first, at start): only a hang reaches it, not a loaded CI machine.
const lineWait = 30 * time.Second

func (l *lines) waitFor(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	last := ""
	for {
		select {
		case s, ok := <-l.ch:
			if !ok {
				t.Fatalf("program ended while waiting for %q (last line %q)", want, last)
			}
			if s == want {
				return
			}
			last = s
		case <-deadline:
			t.Fatalf("no line %q within %v (last line %q)", want, timeout, last)
		}
	}
}

// End to end: rpmbuild the test package, extract it, run it, build hot patches for a
// fix in the program and for a fix in its shared library with syscare-build, take the
// patch objects out of the patch RPMs, apply them to the running process with
// upatch-manage, see the fixes, and take them out again.
func TestBuildAndApply(t *testing.T) {
	testenv.NeedRoot(t, "mount namespaces for the compiler capture and ptrace for the loader")
	pkg := testpkg.Build(t, "scdemo")
	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkg.RPM, root, io.Discard); err != nil {
		t.Fatal(err)
	}

	type built struct {
		patch  *patchmeta.Patch
		dir    string
		stdout string
	}
	build := func(name, fix, rebuilt string) built {
		t.Helper()
		out := t.TempDir()
		r := runBuilder(t, nil, "--patch-name", name, "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
			"--patch", fixturePatch(t, fix), "--output", out, "--jobs", "2")
		if r.code != 0 {
			t.Fatalf("syscare-build %s: exit %d\n%s\n%s", fix, r.code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stdout, rebuilt) {
			t.Errorf("%s: want %q in the steps:\n%s", fix, rebuilt, r.stdout)
		}
		for _, step := range []string{"prepare", "build original", "build patched", "diff", "cross-check", "link", "package"} {
			if !strings.Contains(r.stdout, step) {
				t.Errorf("step %q not shown:\n%s", step, r.stdout)
			}
		}
		rpmName := fmt.Sprintf("patch-scdemo-1.0-1-%s-1-1.x86_64.rpm", name)
		srpm := fmt.Sprintf("patch-scdemo-1.0-1-%s-1-1.src.rpm", name)
		for _, f := range []string{rpmName, srpm} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Fatalf("output %s: %v", f, err)
			}
		}
		req, _ := exec.Command("rpm", "-qp", "--requires", filepath.Join(out, rpmName)).Output()
		if !strings.Contains(string(req), "scdemo = 1.0-1\n") || !strings.Contains(string(req), "syscare\n") {
			t.Errorf("requires:\n%s", req)
		}
		x := t.TempDir()
		if err := rpmfile.Extract(context.Background(), filepath.Join(out, rpmName), x, io.Discard); err != nil {
			t.Fatal(err)
		}
		dirs, _ := filepath.Glob(filepath.Join(x, "usr/lib/syscare/patches/*"))
		if len(dirs) != 1 {
			t.Fatalf("patch directories %q", dirs)
		}
		p, err := patchmeta.Load(dirs[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := p.VerifyFiles(dirs[0]); err != nil {
			t.Fatal(err)
		}
		return built{p, dirs[0], r.stdout}
	}

	// calc.h is included by main.c, calc.c, table.c and the unit test: four units
	// rebuilt, one function changed. msg.c is compiled inside the library's link
	// command. vec.c is in a static library linked into the program.
	prog := build("HP001", "fix-calc.patch", "4 of 6 objects rebuilt")
	lib := build("HP002", "fix-msg.patch", "1 of 6 objects rebuilt")
	vendored := build("HP003", "fix-vendor.patch", "1 of 6 objects rebuilt")
	checks := []struct {
		b        built
		path     string
		funcName string
	}{{prog, "/usr/bin/scdemo", "compute"}, {lib, "/usr/lib64/libscmsg.so.1", "message"},
		{vendored, "/usr/bin/scdemo", "vec_bias"}}
	for _, c := range checks {
		checkReport(t, c.b.dir, c.b.patch, c.b.stdout, c.path, c.funcName)
		e := c.b.patch.Entities
		if len(e) != 1 || e[0].TargetPath != c.path || len(e[0].Functions) != 1 || e[0].Functions[0].Name != c.funcName {
			t.Fatalf("entities %+v, want one for %s replacing %s", e, c.path, c.funcName)
		}
		// The build-id is the shipped file's: the rebuild has another one.
		f, err := elfsafe.Open(filepath.Join(root, c.path))
		if err != nil {
			t.Fatal(err)
		}
		id, _ := elfsafe.BuildID(f.File)
		f.Close()
		if hex.EncodeToString(id) != e[0].BuildID {
			t.Errorf("%s: patch.json build-id %s, shipped file %x", c.path, e[0].BuildID, id)
		}
	}
	if c := checks[0].b.patch.Target; c.Name != "scdemo" || c.EVR() != "1.0-1" || c.Arch != "x86_64" {
		t.Errorf("target %+v", c)
	}

	if loaderMissed != "" {
		t.Fatal(loaderMissed)
	}
	for _, c := range checks {
		prodhost.Check(t, "", filepath.Join(root, c.path))
	}
	cmd := exec.Command(filepath.Join(root, "usr/bin/scdemo"))
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(root, "usr/lib64"))
	out := startLines(t, cmd)
	out.waitFor(t, "hello 22", lineWait)
	pid := fmt.Sprint(cmd.Process.Pid)
	manage := func(args ...string) {
		t.Helper()
		if o, err := exec.Command(loader, args...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage %q: %v\n%s", args, err, o)
		}
	}
	for _, c := range []struct {
		b          built
		want, orig string
	}{{prog, "hello 220", "hello 22"}, {lib, "patched 22", "hello 22"}, {vendored, "hello 1022", "hello 22"}} {
		e := c.b.patch.Entities[0]
		obj := filepath.Join(c.b.dir, e.File)
		args := []string{"--pid", pid, "--uuid", e.UUID}
		if e.TargetPath != "/usr/bin/scdemo" {
			args = append(args, "--binary", filepath.Join(root, e.TargetPath))
		}
		manage(append([]string{"patch", "--patch", obj}, args...)...)
		out.waitFor(t, c.want, lineWait)
		manage(append([]string{"unpatch"}, args...)...)
		out.waitFor(t, c.orig, lineWait)
	}
}

// checkReport checks the patch report of a one-ELF patch: printed at the end of the
// build, and stored as report.json next to patch.json, naming fn as changed code.
func checkReport(t *testing.T, dir string, p *patchmeta.Patch, stdout, target, fn string) {
	t.Helper()
	if !strings.Contains(stdout, "Patch report for "+target) || !strings.Contains(stdout, "    "+fn+" (") {
		t.Errorf("the printed report lacks %s in %s:\n%s", fn, target, stdout)
	}
	if p.Report != "report.json" {
		t.Fatalf("patch.json report = %q", p.Report)
	}
	data, err := os.ReadFile(filepath.Join(dir, p.Report))
	if err != nil {
		t.Fatal(err)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(data, &elems); err != nil || len(elems) != 1 {
		t.Fatalf("report.json: %v, %d reports\n%s", err, len(elems), data)
	}
	rp, err := diff.ParseReport(elems[0])
	if err != nil {
		t.Fatal(err)
	}
	var sum struct {
		Summary string `json:"summary"`
	}
	json.Unmarshal(elems[0], &sum)
	if rp.Target != target || len(rp.Changed) != 1 || rp.Changed[0].Name != fn || rp.Changed[0].Why != diff.WhyCode ||
		rp.Refused != nil || sum.Summary != rp.Summary() {
		t.Errorf("report.json of %s: %+v, summary %q", target, rp, sum.Summary)
	}
}

// Bad input: each case must fail with its exit status and say why; the work
// directory goes away, the log stays and its path is printed.
func TestBadInput(t *testing.T) {
	pkg := testpkg.Build(t, "scdemo")
	other := testpkg.BuildWith(t, "scdemo", "dist .other")
	junk := filepath.Join(t.TempDir(), "junk.src.rpm")
	os.WriteFile(junk, []byte("this is not an RPM package\n"), 0o644)
	kernel := kernelSRPM(t)
	fix := fixturePatch(t, "fix-calc.patch")
	std := func(src, dbg, patch string) []string {
		return []string{"--patch-name", "HP9", "--source", src, "--debuginfo", dbg, "--patch", patch}
	}
	cases := []struct {
		name string
		env  []string
		args []string
		code int
		want []string
	}{
		{"usage", nil, []string{"--patch-name", "x"}, exitUsage, []string{"missing --debuginfo, --patch, --source"}},
		{"unknown flag", nil, []string{"--frobnicate"}, exitUsage, []string{"frobnicate"}},
		{"non-RPM source", nil, std(junk, pkg.Debuginfo, fix), exitError, []string{"not an RPM package"}},
		{"binary as source", nil, std(pkg.RPM, pkg.Debuginfo, fix), exitError, []string{"is a binary RPM"}},
		{"binary as debuginfo", nil, std(pkg.SRPM, pkg.RPM, fix), exitError, []string{"not a -debuginfo package"}},
		{"debuginfo of another release", nil, std(pkg.SRPM, other.Debuginfo, fix), exitError,
			[]string{"was built from scdemo-1.0-1.other.src.rpm", "scdemo-1.0-1.src.rpm"}},
		{"kernel with a user package's debuginfo", nil, std(kernel, pkg.Debuginfo, fix), exitError,
			[]string{"scdemo-debuginfo-1.0-1 is for another kernel build", "kernel-6.1-1.src.rpm"}},
		{"two sources for a user package", nil, append(std(pkg.SRPM, pkg.Debuginfo, fix), "--source", pkg.SRPM), exitError,
			[]string{"several --source: only a kernel patch takes more"}},
		{"missing tool", []string{"PATH=/nonexistent"}, std(pkg.SRPM, pkg.Debuginfo, fix), exitError, []string{"missing tool: rpmbuild"}},
		{"patch does not apply", nil, std(pkg.SRPM, pkg.Debuginfo, fixturePatch(t, "fix-bad.patch")), exitError,
			[]string{"patch does not apply: fix-bad.patch", "full log:"}},
		{"no functional change", nil, std(pkg.SRPM, pkg.Debuginfo, fixturePatch(t, "fix-comment.patch")), exitNoChange,
			[]string{"no functional change"}},
		{"unpatchable", nil, std(pkg.SRPM, pkg.Debuginfo, fixturePatch(t, "fix-data-FAIL.patch")), exitUnpatchable,
			[]string{"cannot be hot patched", "table_lookup", "calls", "table.c"}},
	}
	// Looked for in standard output: the printed report.
	wantOut := map[string][]string{
		"unpatchable": {"Patch report for /usr/bin/scdemo", "REFUSED: function table_lookup, section .data.calls:", "in table.c"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			work, tmp, out := t.TempDir(), t.TempDir(), t.TempDir()
			env := append([]string{"TMPDIR=" + tmp}, c.env...)
			r := runBuilder(t, env, append(c.args, "--workdir", work, "--output", out)...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, c.code, r.stdout, r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			for _, w := range wantOut[c.name] {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
			if left, _ := os.ReadDir(work); len(left) != 0 {
				t.Errorf("work directory not cleaned: %v", left)
			}
			if c.code != exitUsage {
				// The log is kept in the output directory, never under a predictable
				// name in the shared TMPDIR.
				logs, _ := filepath.Glob(filepath.Join(out, "syscare-build-*.log"))
				if len(logs) != 1 || !strings.Contains(r.stderr, logs[0]) {
					t.Errorf("kept logs %q not named in stderr:\n%s", logs, r.stderr)
				}
				if inTmp, _ := os.ReadDir(tmp); len(inTmp) != 0 {
					t.Errorf("left in TMPDIR: %v", inTmp)
				}
			}
		})
	}
}

// --dry-run stops after the report: exit 0, no RPM. The vendored static library's fix
// is in the report for the program; the unit test's change goes into no shipped
// binary and is only noted.
func TestDryRun(t *testing.T) {
	pkg := testpkg.Build(t, "scdemo")
	out, work := t.TempDir(), t.TempDir()
	r := runBuilder(t, nil, "--patch-name", "DRY1", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fixturePatch(t, "fix-vendor.patch"), "--patch", fixturePatch(t, "fix-test-only.patch"),
		"--output", out, "--workdir", work, "--dry-run")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	t.Log(r.stdout)
	for _, w := range []string{"2 of 6 objects rebuilt", "Patch report for /usr/bin/scdemo", "    vec_bias (vendor/vec/vec.c): code changed",
		"note: tests/test_table.c: goes into no shipped binary", "package (dry run)", "dry run: the patch would build"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout lacks %q", w)
		}
	}
	if strings.Contains(r.stdout, "test_table.c: code changed") || strings.Contains(r.stdout, "patch RPM:") {
		t.Error("the unit test's change is in the report, or an RPM was named")
	}
	if left, _ := os.ReadDir(out); len(left) != 0 {
		t.Errorf("a dry run wrote %v", left)
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("work directory not cleaned: %v", left)
	}

	// The unit test alone is no hot patch.
	r = runBuilder(t, nil, "--patch-name", "DRY2", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fixturePatch(t, "fix-test-only.patch"), "--output", out, "--dry-run")
	if r.code != exitNoChange || !strings.Contains(r.stderr, "tests/test_table.c: goes into no shipped binary (only into tests/test_table)") {
		t.Errorf("test-only fix: exit %d, want %d\n%s\n%s", r.code, exitNoChange, r.stdout, r.stderr)
	}
}

// A fix of the program and of its library makes one report per ELF, each naming only
// its own translation units, both in report.json.
func TestReportPerTarget(t *testing.T) {
	pkg := testpkg.Build(t, "scdemo")
	out := t.TempDir()
	r := runBuilder(t, nil, "--patch-name", "TWO", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fixturePatch(t, "fix-vendor.patch"), "--patch", fixturePatch(t, "fix-msg.patch"), "--output", out)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	x := t.TempDir()
	if err := rpmfile.Extract(context.Background(), filepath.Join(out, "patch-scdemo-1.0-1-TWO-1-1.x86_64.rpm"), x, io.Discard); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(x, "usr/lib/syscare/patches/*/report.json"))
	if len(files) != 1 {
		t.Fatalf("report.json in the RPM: %q", files)
	}
	data, _ := os.ReadFile(files[0])
	var elems []json.RawMessage
	if err := json.Unmarshal(data, &elems); err != nil || len(elems) != 2 {
		t.Fatalf("report.json: %v, %d reports\n%s", err, len(elems), data)
	}
	want := map[string][2]string{"/usr/bin/scdemo": {"vendor/vec/vec.c", "vec_bias"}, "/usr/lib64/libscmsg.so.1": {"msg.c", "message"}}
	for _, e := range elems {
		rp, err := diff.ParseReport(e)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[rp.Target]
		if !ok || len(rp.Files) != 1 || rp.Files[0] != w[0] || len(rp.Changed) != 1 || rp.Changed[0].Name != w[1] {
			t.Errorf("report %+v, want files [%s] changing %s", rp, w[0], w[1])
		}
		delete(want, rp.Target)
		if !strings.Contains(r.stdout, "Patch report for "+rp.Target) {
			t.Errorf("report of %s not printed", rp.Target)
		}
	}
	if len(want) != 0 {
		t.Errorf("no report for %v", want)
	}
}

func kernelSRPM(t *testing.T) string {
	t.Helper()
	top := t.TempDir()
	spec := filepath.Join(top, "kernel.spec")
	os.WriteFile(spec, []byte("Name: kernel\nVersion: 6.1\nRelease: 1\nSummary: k\nLicense: GPL\n%description\nk\n%files\n"), 0o644)
	if out, err := exec.Command("rpmbuild", "-bs", "--nodeps", "--define", "_topdir "+top, spec).CombinedOutput(); err != nil {
		t.Fatalf("rpmbuild -bs: %v\n%s", err, out)
	}
	return filepath.Join(top, "SRPMS", "kernel-6.1-1.src.rpm")
}

func TestHelp(t *testing.T) {
	r := runBuilder(t, nil, "--help")
	if r.code != 0 {
		t.Fatalf("--help exit %d", r.code)
	}
	for _, w := range []string{"SYNOPSIS", "EXIT STATUS", "--dry-run", "PATCH REPORT", "--skip-compiler-check", "--patch-description", "3   no functional change", "4   the change cannot be hot patched",
		"KERNEL PATCHES", "--kernel-config FILE", "--kernel-cache DIR", "out-of-tree module"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("--help lacks %q", w)
		}
	}
}

// BenchmarkHotPatchVsRpmbuild measures, in one run, the time syscare-build takes for a
// hot patch of the test package against one plain rpmbuild -bb of the same package.
func BenchmarkHotPatchVsRpmbuild(b *testing.B) {
	pkg := testpkg.Build(b, "scdemo")
	top := b.TempDir()
	if err := rpmfile.Extract(context.Background(), pkg.SRPM, filepath.Join(top, "SOURCES"), io.Discard); err != nil {
		b.Fatal(err)
	}
	var plain, hot time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		out, err := exec.Command("rpmbuild", "-bb", "--nodeps", "--define", "_topdir "+top,
			filepath.Join(top, "SOURCES", "scdemo.spec")).CombinedOutput()
		if err != nil {
			b.Fatalf("rpmbuild: %v\n%s", err, out)
		}
		plain += time.Since(start)
		start = time.Now()
		r := runBuilder(b, nil, "--patch-name", "B1", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
			"--patch", fixturePatch(b, "fix-calc.patch"), "--output", b.TempDir())
		if r.code != 0 {
			b.Fatalf("syscare-build: %d\n%s", r.code, r.stderr)
		}
		hot += time.Since(start)
	}
	b.ReportMetric(plain.Seconds()/float64(b.N), "rpmbuild-s")
	b.ReportMetric(hot.Seconds()/float64(b.N), "hotpatch-s")
	b.ReportMetric(hot.Seconds()/plain.Seconds(), "ratio")
}

// startLines starts cmd, killed when the test ends, and hands its output lines to
// the returned reader (lines nobody waits for are dropped).
func startLines(t *testing.T, cmd *exec.Cmd) *lines {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := &lines{ch: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case out.ch <- sc.Text():
			default:
			}
		}
		close(out.ch)
	}()
	return out
}
