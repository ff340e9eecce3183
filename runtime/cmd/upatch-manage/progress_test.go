package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/termtest"
	"github.com/syscare/syscare/tests/testenv"
)

// TestAllProgressOnATerminal runs patch --all over 12 processes in a terminal (tmux)
// and records what the terminal received: the count of processes done is redrawn on
// one line and cleared before the results; piped, stderr has none of it.
func TestAllProgressOnATerminal(t *testing.T) {
	testenv.NeedRoot(t, "ptrace")
	termtest.Need(t)
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
		waitStarted(t, c.Process.Pid)
	}

	screen, data := termtest.Run(t, bin+" patch --all --binary "+victim+" --patch "+obj+" --force", 150, 40, time.Minute, nil)
	if !strings.Contains(screen, "EXIT=0") || strings.Count(screen, ": patched") != n {
		t.Fatalf("patch --all on a terminal:\n%s", screen)
	}
	if strings.Contains(screen, "of 12 processes") {
		t.Errorf("the progress line was left on the screen:\n%s", screen)
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
