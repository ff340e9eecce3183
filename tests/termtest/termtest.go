// Package termtest runs a command on a real terminal, a detached tmux session, for the
// tests of live progress lines: what the screen shows at the end, the screens seen
// while it ran, and every byte the terminal received.
package termtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
)

// Need skips (or, in CI, fails) a test on a machine without tmux; a test calls it
// before it prepares anything costly.
func Need(t testing.TB) {
	t.Helper()
	_, err := exec.LookPath("tmux")
	testenv.Require(t, err == nil, "tmux not found (tests/deps.sh installs it)")
}

// Run runs the shell command line cmd on a width×height terminal and waits, up to
// timeout, for it to end; the screen's last line then reads "EXIT=<status>". Each
// screen polled meanwhile (every 100 ms) goes to watch, if not nil. The terminal's
// stream is recorded from before the command starts, so that a line redrawn and
// cleared again, which no screen may show, is still in it.
func Run(t testing.TB, cmd string, width, height int, timeout time.Duration, watch func(screen string)) (screen string, stream []byte) {
	t.Helper()
	Need(t)
	dir := t.TempDir()
	sock, raw, start := filepath.Join(dir, "tmux.sock"), filepath.Join(dir, "raw"), filepath.Join(dir, "go")
	script := filepath.Join(dir, "run.sh")
	// The command waits for the go file, made once the stream is recorded; the session
	// stays open after it so that the final screen can be read.
	if err := os.WriteFile(script, []byte("while [ ! -e "+start+" ]; do sleep 0.05; done\n"+cmd+"\necho EXIT=$?\nsleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tmux("new-session", "-d", "-x", strconv.Itoa(width), "-y", strconv.Itoa(height), "sh", script)
	defer exec.Command("tmux", "-S", sock, "kill-server").Run()
	tmux("pipe-pane", "-o", "cat >> "+raw)
	if err := os.WriteFile(start, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		screen = tmux("capture-pane", "-p")
		if watch != nil {
			watch(screen)
		}
		if strings.Contains(screen, "EXIT=") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not end within %v; screen:\n%s", cmd, timeout, screen)
		}
	}
	// cat writes the stream to the file a moment after the screen shows it (later on a
	// loaded machine: 30 s only guards against a hang).
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if stream, _ = os.ReadFile(raw); strings.Contains(string(stream), "EXIT=") {
			break
		}
	}
	return screen, stream
}
