package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/nsroot"
)

// patch --all --binary reaches a container's own copy of the binary (same build-id,
// another inode, another root) and leaves alone a container whose copy has another
// build-id; unpatch --all takes it out again.
func TestAllProcessesInContainers(t *testing.T) {
	bin := tool(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	run1(t, "gcc", "-O2", "-g", "-pthread", testdata("victim.c"), "-o", victim)
	// Same code, another build-id: as a rebuild of the same source would be.
	rebuilt := filepath.Join(dir, "victim-rebuilt")
	run1(t, "gcc", "-O2", "-g", "-pthread", "-Wl,--build-id=0x0123456789abcdef0123456789abcdef01234567", testdata("victim.c"), "-o", rebuilt)
	obj := filepath.Join(dir, "fix.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), testdata("fix_greet.c"), "-o", obj)

	same := nsroot.New(t, map[string]string{"/opt/app/victim": victim})
	other := nsroot.New(t, map[string]string{"/opt/app/victim": rebuilt})
	inSame := same.Start(t, "/opt/app/victim")
	inOther := other.Start(t, "/opt/app/victim")
	inSame.WaitFor(t, "greet=1", 10*time.Second)
	inOther.WaitFor(t, "greet=1", 10*time.Second)

	uuid := "66666666-6666-4666-8666-666666666666"
	r := invoke(t, bin, "patch", "--all", "--binary", victim, "--patch", obj, "--uuid", uuid, "--force", "--json")
	var rows []struct {
		Pid int  `json:"pid"`
		OK  bool `json:"ok"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 {
		t.Fatalf("patch --all: %v %+v", err, r)
	}
	var pids []int
	for _, row := range rows {
		if !row.OK {
			t.Errorf("pid %d failed: %+v", row.Pid, r)
		}
		pids = append(pids, row.Pid)
	}
	if !slices.Equal(pids, []int{inSame.Pid}) {
		t.Fatalf("patched %v, want only the container with the same build-id (%d); %d has another build-id", pids, inSame.Pid, inOther.Pid)
	}
	inSame.WaitFor(t, "greet=2", 10*time.Second)
	if l := inOther.Line(t, 10*time.Second); l[:7] != "greet=1" {
		t.Fatalf("the other build was changed: %q", l)
	}
	r = invoke(t, bin, "unpatch", "--all", "--binary", victim, "--uuid", uuid)
	if r.code != 0 {
		t.Fatalf("unpatch --all: %+v", r)
	}
	inSame.WaitFor(t, "greet=1", 10*time.Second)
}
