package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/nsroot"
)

// Containers: processes in other mount and pid namespaces that run their own copy of the
// target (same build-id, another inode, a path that exists only inside) are patched by
// apply, shown with their namespace by `syscare processes`, patched when they start
// after the apply (the watcher's probe on the copy; for a copy nothing ran yet, its first
// exec), and unpatched by remove; a container whose copy has another build-id is left
// alone throughout.
func TestContainers(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	target := filepath.Join(s.root, "usr/bin/victim")
	other := filepath.Join(t.TempDir(), "victim-other-build")
	writeWithOtherBuildID(t, target, other)

	host := s.startVictim()
	inside := nsroot.New(t, map[string]string{"/opt/app/victim": target})
	// Mounted as container images are (overlayfs), to be found at its first exec.
	fresh := nsroot.NewOverlay(t, map[string]string{"/srv/victim": target})
	foreign := nsroot.New(t, map[string]string{"/opt/app/victim": other})
	running := inside.Start(t, "/opt/app/victim")
	stranger := foreign.Start(t, "/opt/app/victim")
	running.WaitFor(t, "1 10", 10*time.Second)
	stranger.WaitFor(t, "1 10", 10*time.Second)

	if out := s.must("apply", hp1.uuid); out != "victim-1.0-1/HP001-1-1/victim: ACTIVED\n" {
		t.Fatalf("apply: %q", out)
	}
	s.waitOutput(host, "2 10")
	running.WaitFor(t, "2 10", 10*time.Second)
	for i := 0; i < 20; i++ {
		if l := stranger.Line(t, hangGuard); l != "1 10" {
			t.Fatalf("the container with another build-id was patched: %q", l)
		}
	}

	var ps []syscarebus.ProcessState
	if err := json.Unmarshal([]byte(s.must("--json", "processes", hp1.uuid)), &ps); err != nil {
		t.Fatal(err)
	}
	byPid := map[int]syscarebus.ProcessState{}
	for _, p := range ps {
		byPid[int(p.Pid)] = p
	}
	hostNS := mountNS(t, os.Getpid())
	if p, ok := byPid[host.cmd.Process.Pid]; !ok || p.Status != "ACTIVED" || p.MountNS != hostNS {
		t.Errorf("host process: %+v (host mount namespace %d)", p, hostNS)
	}
	if p, ok := byPid[running.Pid]; !ok || p.Status != "ACTIVED" || p.MountNS != inside.MntNS(t) || p.MountNS == hostNS {
		t.Errorf("container process %d: %+v, want ACTIVED in mount namespace %d", running.Pid, p, inside.MntNS(t))
	}
	if _, ok := byPid[stranger.Pid]; ok || len(ps) != 2 {
		t.Errorf("processes lists %+v, want the host's and the container's with the same build-id only", ps)
	}
	text := s.must("processes", hp1.uuid)
	if want := fmt.Sprintf("%d: ACTIVED mnt:[%d]", running.Pid, inside.MntNS(t)); !strings.Contains(text, want) {
		t.Errorf("processes:\n%s\nlacks %q", text, want)
	}

	// A restarted helper finds the patch in the container's process too (ACTIVED, not
	// partial), from the header in the process.
	s.killHelper()
	if st := s.status(hp1.uuid); st != "ACTIVED" {
		t.Fatalf("status after a helper restart: %s", st)
	}
	if text := s.must("processes", hp1.uuid); !strings.Contains(text, fmt.Sprintf("%d: ACTIVED mnt:[%d]", running.Pid, inside.MntNS(t))) {
		t.Fatalf("processes after a helper restart:\n%s", text)
	}

	// Started in the container after the apply: stopped at its entry point by the probe
	// on the container's copy, so the very first line already shows the fix.
	late := inside.Start(t, "/opt/app/victim")
	if l := late.Line(t, 10*time.Second); l != "2 10" {
		t.Fatalf("process started in the container after the apply printed %q first", l)
	}
	// A copy nothing ran when the patch was applied, on an overlay root: its first process
	// is caught at its exec (late, so only eventually patched), and the next one at its
	// entry point.
	first := fresh.Start(t, "/srv/victim")
	first.WaitFor(t, "2 10", 10*time.Second)
	second := fresh.Start(t, "/srv/victim")
	if l := second.Line(t, 10*time.Second); l != "2 10" {
		t.Fatalf("second process of a newly seen copy printed %q first", l)
	}

	s.must("remove", hp1.uuid)
	s.waitOutput(host, "1 10")
	for _, p := range []*nsroot.Proc{running, late, first, second} {
		p.WaitFor(t, "1 10", 10*time.Second)
	}
	after := inside.Start(t, "/opt/app/victim")
	if l := after.Line(t, 10*time.Second); l != "1 10" {
		t.Fatalf("process started in the container after the remove printed %q", l)
	}
	if l := stranger.Line(t, hangGuard); l != "1 10" {
		t.Fatalf("the container with another build-id: %q", l)
	}
}

// writeWithOtherBuildID writes a copy of the ELF src whose GNU build-id differs in its
// first byte: the same code, as a rebuild of the same source would have.
func writeWithOtherBuildID(t *testing.T, src, dst string) {
	t.Helper()
	f, err := elfsafe.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	id, err := elfsafe.BuildID(f.File)
	f.Close()
	if err != nil || len(id) == 0 {
		t.Fatalf("build-id of %s: %v", src, err)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(data, id) != 1 {
		t.Fatalf("build-id of %s appears %d times", src, bytes.Count(data, id))
	}
	changed := bytes.Clone(id)
	changed[0] ^= 0xff
	if err := os.WriteFile(dst, bytes.Replace(data, id, changed, 1), 0o755); err != nil {
		t.Fatal(err)
	}
}

func mountNS(t *testing.T, pid int) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}
