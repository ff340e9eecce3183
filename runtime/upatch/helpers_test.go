package upatch

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchobj"
)

func testdata(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata", name)
}

func includeDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "include")
}

// gcc compiles a fixture; args are passed through.
func gcc(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("gcc", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// buildVictim builds testdata/victim.c with extra flags (e.g. -no-pie).
func buildVictim(t testing.TB, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "victim")
	args := append([]string{"-O2", "-g", "-pthread"}, flags...)
	gcc(t, append(args, testdata("victim.c"), "-o", bin)...)
	return bin
}

func buildIDHex(t testing.TB, path string) string {
	t.Helper()
	f, err := elfsafe.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := elfsafe.BuildID(f.File)
	if err != nil || id == nil {
		t.Fatalf("build-id of %s: %v", path, err)
	}
	return hex.EncodeToString(id)
}

// buildPatch compiles a fixture patch for the target at targetPath, recording its
// build-id unless buildID is "-" (none) or another value (a wrong one).
func buildPatch(t testing.TB, src, targetPath, buildID string, flags ...string) (string, *patchobj.Object) {
	t.Helper()
	obj := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(src), ".c")+".o")
	args := []string{"-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", includeDir()}
	switch buildID {
	case "":
		args = append(args, fmt.Sprintf(`-DTARGET_BUILD_ID="%s"`, buildIDHex(t, targetPath)))
	case "-":
	default:
		args = append(args, fmt.Sprintf(`-DTARGET_BUILD_ID="%s"`, buildID))
	}
	args = append(args, flags...)
	gcc(t, append(args, testdata(src), "-o", obj)...)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	o, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatalf("parse %s: %v", src, err)
	}
	return obj, o
}

// proc is a running fixture program whose output lines the test reads.
type victim struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	lines []string
	cond  *sync.Cond
	done  bool
}

func start(t testing.TB, bin string, env []string, args ...string) *victim {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v := &victim{cmd: cmd, stdin: stdin}
	v.cond = sync.NewCond(&v.mu)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			v.mu.Lock()
			v.lines = append(v.lines, sc.Text())
			if len(v.lines) > 4096 {
				v.lines = v.lines[2048:]
			}
			v.cond.Broadcast()
			v.mu.Unlock()
		}
		v.mu.Lock()
		v.done = true
		v.cond.Broadcast()
		v.mu.Unlock()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	v.waitFor(t, func(string) bool { return true }) // running its loop
	return v
}

func (v *victim) pid() int { return v.cmd.Process.Pid }

// waitFor waits for a new output line that satisfies ok and returns it.
func (v *victim) waitFor(t testing.TB, ok func(string) bool) string {
	t.Helper()
	return v.waitFrom(t, -1, ok)
}

// mark returns the number of lines read so far, for waitFrom.
func (v *victim) mark() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.lines)
}

// send writes s to the program's stdin and returns the first output line after
// that which satisfies ok.
func (v *victim) send(t testing.TB, s string, ok func(string) bool) string {
	t.Helper()
	seen := v.mark()
	if _, err := v.stdin.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	return v.waitFrom(t, seen, ok)
}

// waitFrom is waitFor counting from line seen (-1: from now).
func (v *victim) waitFrom(t testing.TB, seen int, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	v.mu.Lock()
	defer v.mu.Unlock()
	if seen < 0 || seen > len(v.lines) {
		seen = len(v.lines)
	}
	timer := time.AfterFunc(30*time.Second, func() { v.mu.Lock(); v.cond.Broadcast(); v.mu.Unlock() })
	defer timer.Stop()
	for {
		for ; seen < len(v.lines); seen++ {
			if ok(v.lines[seen]) {
				return v.lines[seen]
			}
		}
		if seen > len(v.lines) {
			seen = len(v.lines)
		}
		if v.done || time.Now().After(deadline) {
			last := ""
			if len(v.lines) > 0 {
				last = v.lines[len(v.lines)-1]
			}
			t.Fatalf("pid %d: no matching output (exited=%v, last line %q)", v.pid(), v.done, last)
		}
		v.cond.Wait()
	}
}

// expect waits until a line containing want appears, then checks the next line too,
// so a stale buffered line cannot pass the test.
func (v *victim) expect(t testing.TB, want string) string {
	t.Helper()
	v.waitFor(t, func(l string) bool { return strings.Contains(l, want) })
	return v.waitFor(t, func(string) bool { return true })
}

// alive checks the process is still running and producing output.
func (v *victim) alive(t testing.TB) {
	t.Helper()
	v.waitFor(t, func(string) bool { return true })
	v.waitFor(t, func(string) bool { return true })
}

func opts(uuid string) Options { return Options{UUID: uuid, RetryDelay: 5 * time.Millisecond} }
