package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
)

// TestAllProgressOnATerminal runs patch --all over 12 processes in a terminal (tmux)
// and records what the terminal received: the count of processes done is redrawn on
// one line and cleared before the results; piped, stderr has none of it.
func TestAllProgressOnATerminal(t *testing.T) {
	testenv.NeedRoot(t, "ptrace")
	_, err := exec.LookPath("tmux")
	testenv.Require(t, err == nil, "tmux not found (tests/deps.sh installs it)")
	bin := tool(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	run1(t, "gcc", "-O2", "-g", "-pthread", testdata("victim.c"), "-o", victim)
	obj := filepath.Join(dir, "fix.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), testdata("fix_greet.c"), "-o", obj)
	const n = 12
	for i := 0; i < n; i++ {
		c := exec.Command(victim)
		stdin, _ := c.StdinPipe()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); c.Process.Kill(); c.Wait() })
	}
	time.Sleep(200 * time.Millisecond)

	sock, raw := filepath.Join(dir, "tmux.sock"), filepath.Join(dir, "raw")
	script := filepath.Join(dir, "run.sh")
	// The build waits for the go file, made once the terminal's stream is recorded.
	start := filepath.Join(dir, "go")
	os.WriteFile(script, []byte("while [ ! -e "+start+" ]; do sleep 0.05; done\n"+bin+" patch --all --binary "+victim+
		" --patch "+obj+" --force\necho EXIT=$?\nsleep 30\n"), 0o755)
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("new-session", "-d", "-x", "150", "-y", "40", "sh", script)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()
	tmux("pipe-pane", "-o", "cat >> "+raw)
	os.WriteFile(start, nil, 0o644)
	var screen string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if screen = tmux("capture-pane", "-p"); strings.Contains(screen, "EXIT=") {
			break
		}
	}
	if !strings.Contains(screen, "EXIT=0") || strings.Count(screen, ": patched") != n {
		t.Fatalf("patch --all on a terminal:\n%s", screen)
	}
	if strings.Contains(screen, "of 12 processes") {
		t.Errorf("the progress line was left on the screen:\n%s", screen)
	}
	// cat writes the stream to the file a moment after the screen shows it.
	var data []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if data, _ = os.ReadFile(raw); strings.Contains(string(data), "EXIT=") {
			break
		}
	}
	for _, want := range []string{"\r\033[Kpatch: 1 of 12 processes", "\r\033[Kpatch: 12 of 12 processes\r\033[K"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the terminal did not receive %q:\n%q", want, data)
		}
	}
	// Piped: no control sequences.
	r := invoke(t, bin, "unpatch", "--all", "--binary", victim, "--uuid", strings.Fields(strings.SplitN(screen, "patched ", 2)[1])[0])
	if r.code != 0 || strings.ContainsAny(r.stderr+r.stdout, "\r\033") {
		t.Errorf("unpatch --all piped: %+v", r)
	}
}
