package upatch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// A pre-fork server in miniature: the parent forks a short-lived child every 2 ms.
const forkerSrc = `#include <signal.h>
#include <unistd.h>
volatile int base;
__attribute__((noipa)) int answer(void) { return base + 1; }
int main(void) {
	signal(SIGCHLD, SIG_IGN);
	for (;;) {
		if (fork() == 0) {
			usleep(20000);
			_exit(answer());
		}
		usleep(2000);
	}
}
`

const forkerPatch = `#include <upatch.h>
static int answer_v2(void) { return 2; }
UPATCH_FUNC(answer, answer_v2);
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
`

// PatchBinary and UnpatchBinary leave no process of a forking server behind: children
// forked from the parent before it was patched (or unpatched), after the processes
// were first listed, are found by the rescans; children that inherited the change
// count as done. A single listing misses them (found with nginx respawning a worker
// during patch --all).
func TestPatchBinaryForkingServer(t *testing.T) {
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "forker.c"), filepath.Join(dir, "forker")
	psrc, pobj := filepath.Join(dir, "fix.c"), filepath.Join(dir, "fix.o")
	if err := os.WriteFile(src, []byte(forkerSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(psrc, []byte(forkerPatch), 0o644); err != nil {
		t.Fatal(err)
	}
	gcc(t, "-O2", "-g", src, "-o", bin)
	gcc(t, "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", includeDir(),
		fmt.Sprintf(`-DTARGET_BUILD_ID="%s"`, buildIDHex(t, bin)), psrc, "-o", pobj)
	b, err := os.ReadFile(pobj)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	e := NewEngine("/")
	// holders returns how many live processes mapping bin hold uuid, and how many not.
	holders := func(uuid string) (with, without int) {
		pids, err := Processes(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			applied, err := e.Info(pid)
			if err != nil {
				continue // a child that exited meanwhile
			}
			found := false
			for _, a := range applied {
				found = found || a.UUID == uuid
			}
			switch {
			case found:
				with++
			case stillMaps(pid, bin):
				// Not a child that was exiting: an exiting process loses its
				// mappings (and its patch with them) before it is gone.
				without++
			}
		}
		return with, without
	}
	for round := 0; round < 5; round++ {
		o := opts(uuid1)
		o.Binary = bin
		res, err := e.PatchBinary(bin, obj, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil && !errors.Is(r.Err, ptrace.ErrExited) {
				t.Fatalf("round %d: patch pid %d: %v", round, r.Pid, r.Err)
			}
		}
		if with, without := holders(uuid1); with == 0 || without > 0 {
			t.Fatalf("round %d: after PatchBinary %d processes hold the patch, %d do not", round, with, without)
		}
		res, err = e.UnpatchBinary(bin, uuid1, o)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil && !errors.Is(r.Err, ptrace.ErrExited) {
				t.Fatalf("round %d: unpatch pid %d: %v", round, r.Pid, r.Err)
			}
		}
		if with, _ := holders(uuid1); with > 0 {
			t.Fatalf("round %d: after UnpatchBinary %d processes still hold the patch", round, with)
		}
	}
}

func stillMaps(pid int, path string) bool {
	maps, err := proc.Maps(pid)
	if err != nil {
		return false
	}
	for _, m := range maps {
		if m.Path == path {
			return true
		}
	}
	return false
}
