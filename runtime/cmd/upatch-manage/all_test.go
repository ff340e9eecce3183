package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// patch --all and unpatch --all over every process of one binary; unpatch --all skips a
// process started after the patch (it never held it) instead of failing.
func TestAllProcessesOfABinary(t *testing.T) {
	bin := tool(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	run1(t, "gcc", "-O2", "-g", "-pthread", testdata("victim.c"), "-o", victim)
	obj := filepath.Join(dir, "fix.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), testdata("fix_greet.c"), "-o", obj)
	startVictim := func() *exec.Cmd {
		c := exec.Command(victim)
		stdin, _ := c.StdinPipe()
		t.Cleanup(func() { stdin.Close() })
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c
	}
	startVictim()
	startVictim()
	time.Sleep(100 * time.Millisecond)
	uuid := "55555555-5555-4555-8555-555555555555"
	r := invoke(t, bin, "patch", "--all", "--binary", victim, "--patch", obj, "--uuid", uuid, "--force", "--json")
	var rows []struct {
		Pid int  `json:"pid"`
		OK  bool `json:"ok"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 || len(rows) != 2 || !rows[0].OK || !rows[1].OK {
		t.Fatalf("patch --all: %v %+v", err, r)
	}
	late := startVictim()
	time.Sleep(100 * time.Millisecond)
	r = invoke(t, bin, "unpatch", "--all", "--binary", victim, "--uuid", uuid)
	if r.code != 0 || strings.Count(r.stdout, "unpatched") != 2 || strings.Contains(r.stdout, "pid "+strconv.Itoa(late.Process.Pid)+":") {
		t.Fatalf("unpatch --all with a late process: %+v", r)
	}
	if r := invoke(t, bin, "unpatch", "--all", "--binary", victim, "--uuid", uuid); r.code != 5 || !strings.Contains(r.stderr, "in no process") {
		t.Fatalf("unpatch --all of a patch nobody holds: %+v", r)
	}
	if r := invoke(t, bin, "patch", "--all", "--patch", obj); r.code != 2 {
		t.Fatalf("--all without --binary: %+v", r)
	}
}
