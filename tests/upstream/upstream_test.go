package upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// The upstream tarball: the orig tarball of Debian 12's lua5.4 source package, which
// is lua.org's lua-5.4.4.tar.gz byte for byte. It is fetched at test time, never
// committed; SYSCARE_LUA_ORIG names a copy to use instead of the network.
const (
	luaVersion  = "5.4.4"
	luaOrigName = "lua5.4_5.4.4.orig.tar.gz"
	luaOrigSHA  = "164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61"
	fixPatch    = "utf8-codes-continuation.patch"
	patchName   = "LUA001"
)

// One Lua statement per probe; the interpreter prints one line for each. The fix makes
// utf8.codes refuse a continuation byte that follows a complete character or starts
// the string; a valid string still iterates the same way.
const (
	probeTrailing = `print(pcall(function() for _ in utf8.codes("a\x80") do end return "accepted" end))`
	probeLeading  = `print(pcall(function() for _ in utf8.codes("\x80") do end return "accepted" end))`
	probeValid    = `print(pcall(function() local t = {} for p, c in utf8.codes("h\u{e9}!") do t[#t+1] = p .. ":" .. c end return table.concat(t, " ") end))`

	acceptedLine = "true\taccepted"
	trailingErr  = "false\tstdin:1: invalid UTF-8 code"
	leadingErr   = "false\tstdin:1: bad argument #1 to 'codes' (invalid UTF-8 code)"
	validLine    = "true\t1:104 2:233 4:33"
)

var (
	binDir     string
	builderBin string
	loaderBin  string
	binErr     string
)

// TestMain builds the product binaries from the tree once: syscare-build and the
// loader upatch-manage.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "syscare-upstream-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	builderBin = filepath.Join(dir, "syscare-build")
	loaderBin = filepath.Join(dir, "upatch-manage")
	for bin, pkg := range map[string]string{
		builderBin: "github.com/syscare/syscare/rpmbuild/cmd/syscare-build",
		loaderBin:  "github.com/syscare/syscare/runtime/cmd/upatch-manage",
	} {
		if out, err := exec.Command(goTool, "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			binErr += fmt.Sprintf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needBinaries(t testing.TB) {
	t.Helper()
	if binErr != "" {
		t.Fatal(binErr)
	}
}

func needRoot(t testing.TB) {
	t.Helper()
	testenv.NeedRoot(t, "mount namespaces for the compiler capture and ptrace for the loader")
}

var luaOrigTarball = &debsrc.Orig{Source: "lua5.4", File: luaOrigName, SHA256: luaOrigSHA, Env: "SYSCARE_LUA_ORIG"}

// luaOrig returns the path of the verified upstream tarball, fetched once per test
// binary.
func luaOrig(t testing.TB) string {
	t.Helper()
	return luaOrigTarball.Get(t, aptDir())
}

// luaRPMs are the packages rpmbuild makes from lua/lua.spec.
type luaRPMs struct {
	top, spec, srpm, rpm, debuginfo string
}

// buildLua runs rpmbuild -ba on the spec with the upstream tarball as Source0.
func buildLua(t testing.TB) *luaRPMs {
	t.Helper()
	orig := luaOrig(t)
	top := t.TempDir()
	for _, d := range []string{"SOURCES", "SPECS"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, orig, filepath.Join(top, "SOURCES", "lua-"+luaVersion+".tar.gz"))
	spec := filepath.Join(top, "SPECS", "lua.spec")
	copyFile(t, filepath.Join("lua", "lua.spec"), spec)
	out, err := exec.Command("rpmbuild", "-ba", "--nodeps", "--define", "_topdir "+top, spec).CombinedOutput()
	if err != nil {
		t.Fatalf("rpmbuild -ba lua.spec: %v\n%s", err, out)
	}
	find := func(pat string) string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(top, pat))
		if len(m) != 1 {
			t.Fatalf("%s: %d matches", pat, len(m))
		}
		return m[0]
	}
	return &luaRPMs{top: top, spec: spec,
		srpm:      find("SRPMS/lua-" + luaVersion + "-1*.src.rpm"),
		rpm:       find("RPMS/*/lua-" + luaVersion + "-1*.rpm"),
		debuginfo: find("RPMS/*/lua-debuginfo-" + luaVersion + "-1*.rpm")}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

type builderRun struct {
	stdout, stderr string
	elapsed        time.Duration
	rpm, srpm      string
}

// hotPatch runs syscare-build for the fix and returns the patch RPM's path.
func hotPatch(t testing.TB, pkgs *luaRPMs) builderRun {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command(builderBin, "--patch-name", patchName, "--source", pkgs.srpm, "--debuginfo", pkgs.debuginfo,
		"--patch", filepath.Join("lua", fixPatch), "--output", out, "--jobs", "2")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	r := builderRun{stdout: o.String(), stderr: e.String(), elapsed: time.Since(start)}
	if err != nil {
		t.Fatalf("syscare-build: %v\nstdout:\n%s\nstderr:\n%s", err, r.stdout, r.stderr)
	}
	r.rpm = filepath.Join(out, fmt.Sprintf("patch-lua-%s-1-%s-1-1.x86_64.rpm", luaVersion, patchName))
	r.srpm = strings.TrimSuffix(r.rpm, ".x86_64.rpm") + ".src.rpm"
	for _, f := range []string{r.rpm, r.srpm} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("syscare-build output: %v\n%s", err, r.stdout)
		}
	}
	return r
}

// patchDir extracts the patch RPM and returns its patch directory and metadata.
func patchDir(t testing.TB, rpm string) (string, *patchmeta.Patch) {
	t.Helper()
	x := t.TempDir()
	if err := rpmfile.Extract(context.Background(), rpm, x, io.Discard); err != nil {
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
	return dirs[0], p
}

// repl is a running interactive interpreter: a line in, its printed lines out.
type repl struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startREPL(t *testing.T, lua string) *repl {
	t.Helper()
	// Empty prompts keep the printed lines clean; -i reads statements from stdin one
	// line at a time, so the process stays alive between probes.
	cmd := exec.Command(lua, "-e", "_PROMPT = '' _PROMPT2 = ''", "-i")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &repl{cmd: cmd, in: in, lines: make(chan string, 256)}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("lua stderr:\n%s", stderr.String())
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	return r
}

// ask sends one statement and returns the line it prints.
func (r *repl) ask(t *testing.T, stmt string) string {
	t.Helper()
	if _, err := io.WriteString(r.in, stmt+"\n"); err != nil {
		t.Fatalf("write to lua: %v", err)
	}
	return r.next(t, fmt.Sprintf("the answer to %q", stmt))
}

// next returns the next printed line.
func (r *repl) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case s, ok := <-r.lines:
		if !ok {
			t.Fatalf("lua ended before printing %s", what)
		}
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
	return ""
}

func (r *repl) expect(t *testing.T, when, stmt, want string) {
	t.Helper()
	if got := r.ask(t, stmt); got != want {
		t.Errorf("%s: %s\nprinted %q, want %q", when, stmt, got, want)
	}
}

// TestUpstreamLuaE2E: Lua 5.4.4 from Debian's source package, wrapped in lua/lua.spec,
// is built into source, binary and -debuginfo RPMs; the interpreter runs; syscare-build
// turns the upstream fix of utf8.codes into a patch RPM; the patch object out of it is
// applied to the running interpreter with upatch-manage, which then refuses the bad
// strings, and removed again, after which it accepts them as before.
func TestUpstreamLuaE2E(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	needBinaries(t)
	pkgs := buildLua(t)
	hp := hotPatch(t, pkgs)
	for _, want := range []string{"1 of ", "objects rebuilt", "iter_aux (src/lutf8lib.c)", "iter_codes (src/lutf8lib.c)"} {
		if !strings.Contains(hp.stdout, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, hp.stdout)
		}
	}
	t.Logf("syscare-build in %v:\n%s", hp.elapsed.Round(time.Millisecond), hp.stdout)
	dir, meta := patchDir(t, hp.rpm)

	// lutf8lib.o is in liblua.a, which both lua and luac link, but only lua takes it:
	// the patch has one entity, for /usr/bin/lua, replacing the two fixed functions.
	if len(meta.Entities) != 1 {
		t.Fatalf("entities %+v, want one for /usr/bin/lua", meta.Entities)
	}
	e := meta.Entities[0]
	var funcs []string
	for _, f := range e.Functions {
		funcs = append(funcs, f.Name)
	}
	slices.Sort(funcs)
	if e.TargetPath != "/usr/bin/lua" || !slices.Equal(funcs, []string{"iter_aux", "iter_codes"}) {
		t.Fatalf("entity %s replaces %q, want /usr/bin/lua replacing iter_aux and iter_codes", e.TargetPath, funcs)
	}
	if meta.Target.Name != "lua" || meta.Target.EVR() != luaVersion+"-1" {
		t.Errorf("target %+v", meta.Target)
	}
	req, _ := exec.Command("rpm", "-qp", "--requires", hp.rpm).Output()
	if !strings.Contains(string(req), "lua = "+luaVersion+"-1\n") {
		t.Errorf("patch RPM requires:\n%s", req)
	}

	// The patch's source RPM carries the target's sources and the fix, so that a later
	// cumulative patch can be built from it.
	list, err := exec.Command("rpm", "-qpl", hp.srpm).Output()
	if err != nil {
		t.Fatalf("rpm -qpl %s: %v", hp.srpm, err)
	}
	for _, f := range []string{"lua-" + luaVersion + ".tar.gz", "lua.spec", fixPatch} {
		if !slices.Contains(strings.Fields(string(list)), f) {
			t.Errorf("patch source RPM lacks %s:\n%s", f, list)
		}
	}

	root := t.TempDir()
	if err := rpmfile.Extract(context.Background(), pkgs.rpm, root, io.Discard); err != nil {
		t.Fatal(err)
	}
	lua := filepath.Join(root, "usr/bin/lua")
	f, err := elfsafe.Open(lua)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := elfsafe.BuildID(f.File)
	f.Close()
	if hex.EncodeToString(id) != e.BuildID {
		t.Errorf("patch.json build-id %s, shipped lua %x", e.BuildID, id)
	}
	prodhost.Check(t, "", lua)

	r := startREPL(t, lua)
	if banner := r.next(t, "the banner"); !strings.HasPrefix(banner, "Lua "+luaVersion+" ") {
		t.Fatalf("banner %q", banner)
	}
	r.expect(t, "before the patch", probeTrailing, acceptedLine)
	r.expect(t, "before the patch", probeLeading, acceptedLine)
	r.expect(t, "before the patch", probeValid, validLine)

	pid := fmt.Sprint(r.cmd.Process.Pid)
	manage := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(loaderBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("upatch-manage %q: %v\n%s", args, err, out)
		} else {
			t.Logf("upatch-manage %s: %s", args[0], bytes.TrimSpace(out))
		}
	}
	manage("patch", "--pid", pid, "--uuid", e.UUID, "--patch", filepath.Join(dir, e.File))
	r.expect(t, "patched", probeTrailing, trailingErr)
	r.expect(t, "patched", probeLeading, leadingErr)
	r.expect(t, "patched", probeValid, validLine)

	manage("unpatch", "--pid", pid, "--uuid", e.UUID)
	r.expect(t, "unpatched", probeTrailing, acceptedLine)
	r.expect(t, "unpatched", probeLeading, acceptedLine)
	r.expect(t, "unpatched", probeValid, validLine)
}
