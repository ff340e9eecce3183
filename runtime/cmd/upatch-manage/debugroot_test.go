package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A stripped target patched with its separate debuginfo found by build-id under --debug-root.
func TestStrippedTargetWithDebugRoot(t *testing.T) {
	bin := tool(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	run1(t, "gcc", "-O2", "-g", "-pthread", testdata("victim.c"), "-o", victim)
	out, err := exec.Command("readelf", "-n", victim).Output()
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "Build" {
			id = f[2]
		}
	}
	root := filepath.Join(dir, "root")
	debug := filepath.Join(root, "usr/lib/debug/.build-id", id[:2], id[2:]+".debug")
	os.MkdirAll(filepath.Dir(debug), 0o755)
	run1(t, "objcopy", "--only-keep-debug", victim, debug)
	run1(t, "strip", "--strip-all", victim)
	obj := filepath.Join(dir, "fix.o")
	run1(t, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(),
		`-DTARGET_BUILD_ID="`+id+`"`, testdata("fix_rich.c"), "-o", obj)

	cmd := exec.Command(victim)
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitStarted(t, cmd.Process.Pid)
	pid := strconv.Itoa(cmd.Process.Pid)
	if r := invoke(t, bin, "patch", "--pid", pid, "--patch", obj); r.code == 0 || !strings.Contains(r.stderr, "symbol not found") || !strings.Contains(r.stderr, "install its -debuginfo package") {
		t.Fatalf("stripped target without its debuginfo: %+v", r)
	}
	if r := invoke(t, bin, "patch", "--pid", pid, "--patch", obj, "--debug-root", root, "--uuid", "44444444-4444-4444-8444-444444444444"); r.code != 0 {
		t.Fatalf("with --debug-root: %+v", r)
	}
	if r := invoke(t, bin, "info", "--pid", pid); !strings.Contains(r.stdout, "tls_read") {
		t.Fatalf("info: %+v", r)
	}
}
