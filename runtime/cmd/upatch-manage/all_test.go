package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
		waitStarted(t, c.Process.Pid)
		return c
	}
	startVictim()
	startVictim()
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

// events returns the --json progress events of a run's stderr, failing on any other
// line that begins with "{".
func events(t *testing.T, stderr string) []progressEvent {
	t.Helper()
	var out []progressEvent
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var ev progressEvent
		dec := json.NewDecoder(strings.NewReader(l))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ev); err != nil || ev.Event != "process" {
			t.Fatalf("progress line %q: %v", l, err)
		}
		out = append(out, ev)
	}
	return out
}

// patch --all --json writes one progress event per process on stderr, done counting up
// to total, each with the process's pid and result; stdout keeps the result document.
// A process that fails has its event say so.
func TestAllJSONProgress(t *testing.T) {
	bin := tool(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	run1(t, "gcc", "-O2", "-g", "-pthread", testdata("victim.c"), "-o", victim)
	obj := filepath.Join(dir, "fix.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), testdata("fix_greet.c"), "-o", obj)
	const n = 6
	want := map[int]bool{}
	for i := 0; i < n; i++ {
		c := exec.Command(victim)
		stdin, _ := c.StdinPipe()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stdin.Close(); c.Process.Kill(); c.Wait() })
		want[c.Process.Pid] = true
		waitStarted(t, c.Process.Pid)
	}
	uuid := "66666666-6666-4666-8666-666666666666"
	r := invoke(t, bin, "patch", "--all", "--binary", victim, "--patch", obj, "--uuid", uuid, "--force", "--json")
	var rows []struct{ Pid int }
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 || len(rows) != n {
		t.Fatalf("patch --all --json: %v %+v", err, r)
	}
	evs := events(t, r.stderr)
	if len(evs) != n {
		t.Fatalf("%d progress events for %d processes:\n%s", len(evs), n, r.stderr)
	}
	for i, ev := range evs {
		if ev.Op != "patch" || !ev.OK || ev.Error != "" || ev.Done != i+1 || ev.Total != n || !want[ev.Pid] || ev.FreezeUS <= 0 {
			t.Errorf("event %d: %+v", i, ev)
		}
		delete(want, ev.Pid)
	}
	if strings.ContainsAny(r.stderr, "\r\033") {
		t.Errorf("a live line among the events: %q", r.stderr)
	}

	// unpatch of one process that holds the patch and one that does not exist.
	pid := strconv.Itoa(rows[0].Pid)
	r = invoke(t, bin, "unpatch", "--pid", pid+",999999999", "--uuid", uuid, "--json")
	evs = events(t, r.stderr)
	if r.code != exitGone || len(evs) != 2 {
		t.Fatalf("unpatch of a live and a gone process: %+v", r)
	}
	for _, ev := range evs {
		ok := ev.Pid == rows[0].Pid
		if ev.Op != "unpatch" || ev.OK != ok || ev.Total != 2 || (!ok && !strings.Contains(ev.Error, "pid 999999999")) {
			t.Errorf("unpatch event %+v", ev)
		}
	}
	if evs[0].Done != 1 || evs[1].Done != 2 {
		t.Errorf("done does not count up: %+v", evs)
	}
}
