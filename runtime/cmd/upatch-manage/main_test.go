package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func testdata(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "upatch", "testdata", name)
}

func include() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "include")
}

func run1(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// tool builds upatch-manage once per test.
func tool(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "upatch-manage")
	run1(t, "go", "build", "-o", bin, ".")
	return bin
}

type result struct {
	code           int
	stdout, stderr string
}

func invoke(t *testing.T, bin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

// waitStarted waits until the victim at pid runs its main(): it has started its
// stdin reader, so the loader is done (a fixed sleep can end first on a loaded machine,
// and a patch then meets a process still being set up). 30 s only guards a hang.
func waitStarted(t *testing.T, pid int) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); err == nil && len(tasks) >= 2 {
			return
		}
	}
	t.Fatalf("victim %d did not start its threads within 30s", pid)
}

func TestCommandLine(t *testing.T) {
	bin := tool(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	run1(t, "gcc", "-O2", "-g", "-pthread", testdata("victim.c"), "-o", victim)
	obj := filepath.Join(dir, "fix.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), testdata("fix_greet.c"), "-o", obj)

	cmd := exec.Command(victim)
	stdout, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case l := <-lines:
				if strings.Contains(l, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no line with %q", want)
			}
		}
	}
	waitFor("greet=1")
	pid := fmt.Sprint(cmd.Process.Pid)

	if r := invoke(t, bin, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Exit status") {
		t.Errorf("--help: %+v", r)
	}
	if r := invoke(t, bin, "patch", "--pid", "x"); r.code != 2 || !strings.Contains(r.stderr, "not a process id") {
		t.Errorf("bad pid: %+v", r)
	}
	if r := invoke(t, bin, "frobnicate"); r.code != 2 {
		t.Errorf("unknown command: %+v", r)
	}
	// No build-id recorded: refused (exit 4) unless --force, with a warning.
	if r := invoke(t, bin, "patch", "--pid", pid, "--patch", obj); r.code != 4 || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("patch without build-id: %+v", r)
	}
	uuid := "33333333-3333-4333-8333-333333333333"
	r := invoke(t, bin, "patch", "--pid", pid, "--patch", obj, "--uuid", uuid, "--force")
	if r.code != 0 || !strings.Contains(r.stdout, "patched "+uuid) || !strings.Contains(r.stderr, "warning") {
		t.Fatalf("patch --force: %+v", r)
	}
	waitFor("greet=2")
	if r := invoke(t, bin, "patch", "--pid", pid, "--patch", obj, "--uuid", uuid, "--force"); r.code != 5 {
		t.Errorf("patch twice: %+v", r)
	}
	r = invoke(t, bin, "info", "--pid", pid, "--json")
	var info struct {
		Pid     int `json:"pid"`
		Patches []struct {
			UUID      string `json:"uuid"`
			Functions []struct {
				Name string `json:"name"`
			} `json:"functions"`
		} `json:"patches"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || r.code != 0 {
		t.Fatalf("info --json: %v %+v", err, r)
	}
	if len(info.Patches) != 1 || info.Patches[0].UUID != uuid || info.Patches[0].Functions[0].Name != "greet" {
		t.Errorf("info = %+v", info)
	}
	r = invoke(t, bin, "unpatch", "--pid", pid, "--uuid", uuid, "--json")
	var rows []struct {
		Pid   int    `json:"pid"`
		UUID  string `json:"uuid"`
		OK    bool   `json:"ok"`
		Tries int    `json:"tries"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 || len(rows) != 1 || !rows[0].OK ||
		fmt.Sprint(rows[0].Pid) != pid || rows[0].UUID != uuid || rows[0].Tries != 1 {
		t.Fatalf("unpatch --json: %v %+v", err, r)
	}
	waitFor("greet=1")
	if r := invoke(t, bin, "unpatch", "--pid", pid, "--uuid", uuid); r.code != 5 || !strings.HasPrefix(r.stderr, "upatch-manage: ") {
		t.Errorf("unpatch twice: %+v", r)
	}
	if r := invoke(t, bin, "info", "--pid", "999999999"); r.code == 0 {
		t.Errorf("info of a missing process: %+v", r)
	}
	// The process is named once, not by both the engine and the tool.
	if r := invoke(t, bin, "patch", "--pid", "999999999", "--patch", obj, "--force"); r.code != 6 ||
		strings.Count(r.stderr, "pid 999999999") != 1 {
		t.Errorf("patch of a missing process: %+v, want exit 6 naming the pid once", r)
	}
	// A patch path that is not a regular file is refused at once, not read forever
	// (/dev/zero) or waited on (a FIFO with no writer).
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dev/zero", fifo} {
		if r := invoke(t, bin, "patch", "--pid", pid, "--patch", p, "--force"); r.code == 0 || !strings.Contains(r.stderr, "not a regular file") {
			t.Errorf("patch from %s: %+v, want a refusal naming it not a regular file", p, r)
		}
	}
	if _, err := os.Stat("/proc/" + pid); err != nil {
		t.Fatal("victim died")
	}
}

func TestPermissionHint(t *testing.T) {
	denied := fmt.Errorf("pid 1: maps of pid 1: %w", os.ErrPermission)
	if permissionHint(denied, 65534) == "" {
		t.Error("no hint for a non-root caller denied access")
	}
	if permissionHint(denied, 0) != "" || permissionHint(fmt.Errorf("other"), 65534) != "" {
		t.Error("hint given for root, or for an error that is not a permission error")
	}
}
