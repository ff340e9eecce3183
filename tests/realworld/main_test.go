package realworld

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/selfcontain"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

var (
	workDir    string
	managerBin string
	binErr     string
	repoRoot   string
)

// TestMain builds upatch-manage from the tree once.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "syscare-realworld-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = dir
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	managerBin = filepath.Join(dir, "upatch-manage")
	if out, err := exec.Command(goTool, "build", "-o", managerBin, "github.com/syscare/syscare/runtime/cmd/upatch-manage").CombinedOutput(); err != nil {
		binErr = fmt.Sprintf("go build upatch-manage: %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t, "ptrace of the servers (nginx's workers run as another user)")
	if binErr != "" {
		t.Fatal(binErr)
	}
}

// aptDir holds the private apt configuration that fetches the source packages.
func aptDir() string { return filepath.Join(workDir, "apt") }

// sh runs a shell command in dir and fails the test with its output on error.
func sh(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("sh", "-ec", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, tail(string(out), 4000))
	}
	return string(out)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// buildID returns the GNU build-id of an ELF file in hex, as readelf prints it.
func buildID(t *testing.T, path string) string {
	t.Helper()
	out := sh(t, "", "readelf -n "+path)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "Build" && f[1] == "ID:" {
			return f[2]
		}
	}
	t.Fatalf("%s: no build-id in\n%s", path, out)
	return ""
}

// compilePatch writes src with the target's build-id appended and compiles it as the
// upatch.h header says.
func compilePatch(t *testing.T, name, src, bid string, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	src += fmt.Sprintf("\nUPATCH_TARGET_BUILD_ID(%q);\n", bid)
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, name+".o")
	args := append([]string{"-c", "-O2", "-ffunction-sections", "-fdata-sections",
		"-I", filepath.Join(repoRoot, "runtime", "include")}, extra...)
	args = append(args, c, "-o", obj)
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", name, err, out)
	}
	return obj
}

// production makes the freshly built bin what a production host runs: a debug copy
// goes to a directory of its own (where no loader looks: the builder's side), bin is
// stripped, and the loader must find no symbol table for it. It returns the debug copy.
func production(t *testing.T, bin string) string {
	t.Helper()
	debug := filepath.Join(t.TempDir(), filepath.Base(bin)+".debug")
	if err := selfcontain.SplitDebug(context.Background(), bin, debug); err != nil {
		t.Fatal(err)
	}
	prodhost.Check(t, "", bin)
	return debug
}

// selfContained returns the hand-written patch obj with the offsets of every symbol of
// the target it uses, resolved from the target's debug copy, as the builder ships it.
func selfContained(t *testing.T, obj, debug string) string {
	t.Helper()
	out := strings.TrimSuffix(obj, ".o") + "-sc.o"
	entries, err := selfcontain.Make(context.Background(), obj, debug, out)
	if err != nil {
		t.Fatalf("make %s self-contained: %v", filepath.Base(obj), err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Key.Name
	}
	t.Logf("%s: offsets of %s", filepath.Base(out), strings.Join(names, " "))
	return out
}

// manage runs upatch-manage and returns its combined output and exit status.
func manage(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(managerBin, args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("upatch-manage: %v", err)
	}
	t.Logf("upatch-manage %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(string(out)))
	return string(out), code
}

func mustManage(t *testing.T, args ...string) string {
	t.Helper()
	out, code := manage(t, args...)
	if code != 0 {
		t.Fatalf("upatch-manage %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}
