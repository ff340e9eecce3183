package realworld

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
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
	if os.Geteuid() != 0 {
		t.Skip("needs root: ptrace of the servers (nginx's workers run as another user)")
	}
	if binErr != "" {
		t.Fatal(binErr)
	}
}

// debOrig is the orig tarball of a Debian 12 source package, fetched with apt-get
// source through a private apt configuration (the system's sources are left alone; apt
// checks the files against the signed Sources index), never committed; env names a
// variable that points at a local copy instead.
type debOrig struct {
	source, file, sha256, env string

	once sync.Once
	path string
	err  error
}

func (o *debOrig) get(t *testing.T) string {
	t.Helper()
	o.once.Do(func() { o.path, o.err = o.fetch() })
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o.path
}

var (
	aptUpdate    sync.Once
	aptUpdateErr error
)

func (o *debOrig) fetch() (string, error) {
	if p := os.Getenv(o.env); p != "" {
		return p, o.check(p)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("apt-get not found: set %s to a copy of %s (sha256 %s)", o.env, o.file, o.sha256)
	}
	dir := filepath.Join(workDir, "apt")
	opts := []string{"-q", "-o", "Dir::Etc::SourceList=" + filepath.Join(dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(dir, "none"),
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"), "-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "APT::Sandbox::User=root"}
	run := func(args ...string) error {
		cmd := exec.Command("apt-get", append(slices.Clone(opts), args...)...)
		cmd.Dir = filepath.Join(dir, "src")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	aptUpdate.Do(func() {
		for _, d := range []string{"lists/partial", "cache/archives/partial", "src"} {
			if aptUpdateErr = os.MkdirAll(filepath.Join(dir, d), 0o755); aptUpdateErr != nil {
				return
			}
		}
		src := "deb-src http://deb.debian.org/debian bookworm main\n"
		if aptUpdateErr = os.WriteFile(filepath.Join(dir, "sources.list"), []byte(src), 0o644); aptUpdateErr != nil {
			return
		}
		aptUpdateErr = run("update")
	})
	if aptUpdateErr != nil {
		return "", aptUpdateErr
	}
	if err := run("source", "--download-only", o.source); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "src", o.file)
	return p, o.check(p)
}

func (o *debOrig) check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != o.sha256 {
		return fmt.Errorf("%s: sha256 %x, want %s", path, sum, o.sha256)
	}
	return nil
}

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
