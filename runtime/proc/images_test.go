package proc

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/nsroot"
)

// buildIDOf reads a file's build-id the slow, independent way (debug/elf).
func buildIDOf(t *testing.T, path string) []byte {
	t.Helper()
	f, err := elfsafe.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := elfsafe.BuildID(f.File)
	if err != nil || len(id) == 0 {
		t.Fatalf("build-id of %s: %x, %v", path, id, err)
	}
	return id
}

// A process in another mount namespace that runs its own copy of the binary (same
// build-id, another inode, a path that does not exist on the host) is found, with its
// namespace; one whose copy has another build-id is not; the host's own process is.
func TestProcessesWithBuildIDAcrossNamespaces(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	os.WriteFile(data, []byte("x"), 0o644)
	other := filepath.Join(t.TempDir(), "mapper-other")
	if out, err := exec.Command("gcc", "-O2", "-pthread", "-DOTHER_BUILD=1", "-o", other, "testdata/mapper.c").CombinedOutput(); err != nil {
		t.Fatalf("build other mapper: %v\n%s", err, out)
	}
	id := buildIDOf(t, mapperBin)
	if bytes.Equal(id, buildIDOf(t, other)) {
		t.Fatal("two builds share a build-id; the test would prove nothing")
	}
	got, err := FileBuildID(mapperBin)
	if err != nil || !bytes.Equal(got, id) {
		t.Fatalf("FileBuildID = %x, %v; debug/elf says %x", got, err, id)
	}

	host, _ := startMapper(t, data)
	same := nsroot.New(t, map[string]string{"/app/mapper": mapperBin, "/app/data": data})
	inSame := same.Start(t, "/app/mapper", "/app/data")
	diff := nsroot.New(t, map[string]string{"/app/mapper": other, "/app/data": data})
	inDiff := diff.Start(t, "/app/mapper", "/app/data")
	inSame.WaitFor(t, "ready", 10*time.Second)
	inDiff.WaitFor(t, "ready", 10*time.Second)

	ims, err := ProcessesWithBuildID(id)
	if err != nil {
		t.Fatal(err)
	}
	byPid := map[int]Image{}
	for _, im := range ims {
		byPid[im.Pid] = im
	}
	if _, ok := byPid[inDiff.Pid]; ok {
		t.Errorf("pid %d runs a copy with another build-id and was found", inDiff.Pid)
	}
	if im, ok := byPid[host]; !ok || im.Path != mapperBin {
		t.Errorf("host process %d: %+v, %v", host, im, ok)
	}
	im, ok := byPid[inSame.Pid]
	if !ok {
		t.Fatalf("pid %d in namespace %d runs a copy with the same build-id and was not found: %+v", inSame.Pid, same.MntNS(t), ims)
	}
	if im.Path != "/app/mapper" {
		t.Errorf("path as the container sees it = %q, want /app/mapper", im.Path)
	}
	// File opens the container's copy, not a host path.
	var want, have os.FileInfo
	want, _ = os.Stat(filepath.Join(same.Root, "app/mapper"))
	if have, err = os.Stat(im.File()); err != nil || !os.SameFile(want, have) {
		t.Errorf("File() = %s is not the container's copy: %v", im.File(), err)
	}
	ns, err := NamespaceOf(inSame.Pid)
	if err != nil || ns.MntNS != same.MntNS(t) {
		t.Errorf("NamespaceOf = %+v, %v; want mount namespace %d", ns, err, same.MntNS(t))
	}
	self, _ := NamespaceOf(os.Getpid())
	if self.MntNS == ns.MntNS {
		t.Error("the container shares the host's mount namespace")
	}

	// ImageIn finds the copy in the maps of the container's process.
	maps, err := Maps(inSame.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if im2, ok := ImageIn(inSame.Pid, maps, id); !ok || im2.Mapping != im.Mapping {
		t.Errorf("ImageIn = %+v, %v; want %+v", im2, ok, im)
	}
	if _, ok := ImageIn(inSame.Pid, maps, []byte("no such build-id")); ok {
		t.Error("ImageIn found a build-id that nothing has")
	}
	pids := make([]int, 0, len(ims))
	for _, im := range ims {
		pids = append(pids, im.Pid)
	}
	if slices.Contains(pids, os.Getpid()) {
		t.Error("the caller is listed")
	}
}

func TestContainerID(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for in, want := range map[string]string{
		"0::/system.slice/docker-" + id + ".scope\n":               id,
		"12:memory:/docker/" + id + "\n0::/docker/" + id:           id,
		"0::/machine.slice/libpod-" + id + ".scope":                id,
		"0::/user.slice/user-0.slice/session-1.scope\n":            "",
		"4:memory:/process_api/26e2b293fdf2264479e05062c9ff5c06\n": "",
		"0::/x/" + id + "0\n":                                      "", // 65 digits is not an id
	} {
		if got := ContainerID([]byte(in)); got != want {
			t.Errorf("ContainerID(%q) = %q, want %q", in, got, want)
		}
	}
}

// A file that is not ELF has no build-id, and says so without an error.
func TestBuildIDOfNonELF(t *testing.T) {
	p := filepath.Join(t.TempDir(), "text")
	os.WriteFile(p, []byte("#!/bin/sh\necho hi\n"), 0o755)
	if id, err := FileBuildID(p); err != nil || id != nil {
		t.Fatalf("FileBuildID(text) = %x, %v", id, err)
	}
	if id, err := FileBuildID("/dev/null"); err != nil || id != nil {
		t.Fatalf("FileBuildID(/dev/null) = %x, %v", id, err)
	}
}

// InnerIDs gives the ids a process has inside its own pid namespace.
func TestInnerIDs(t *testing.T) {
	self := os.Getpid()
	if g, id, err := InnerIDs(self); err != nil || g != self || id != self {
		t.Fatalf("InnerIDs(self) = %d, %d, %v", g, id, err)
	}
	ns := nsroot.New(t, map[string]string{"/app/mapper": mapperBin})
	// The namespace's init is pid 1 inside; the first program started there gets another.
	if g, id, err := InnerIDs(ns.Init); err != nil || g != 1 || id != 1 {
		t.Fatalf("InnerIDs(init of a pid namespace) = %d, %d, %v; want 1, 1", g, id, err)
	}
	p := ns.Start(t, "/app/mapper", "/app/mapper")
	p.WaitFor(t, "ready", 10*time.Second)
	g, id, err := InnerIDs(p.Pid)
	if err != nil || g != id || g <= 1 || g == p.Pid {
		t.Fatalf("InnerIDs(%d) = %d, %d, %v; want its own small pid", p.Pid, g, id, err)
	}
}
