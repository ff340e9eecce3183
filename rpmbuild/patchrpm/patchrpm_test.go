package patchrpm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchmeta"
)

const uuid = "0b9e8a52-3c1d-4c47-9a57-5d2f6f0e7a11"

func testPatch() *patchmeta.Patch {
	return &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: uuid, Name: "HP001", Version: "1", Release: "2",
		Arch: "x86_64", Kind: patchmeta.KindUser,
		Target:      patchmeta.Package{Name: "scdemo", Epoch: 3, Version: "1.0", Release: "1", Arch: "x86_64", License: "MIT"},
		Description: "fix 100% of the bugs\n%install\nrm -rf /",
		Entities: []patchmeta.Entity{{UUID: "1b9e8a52-3c1d-4c47-9a57-5d2f6f0e7a11", File: "scdemo.upatch",
			TargetPath: "/usr/bin/scdemo", BuildID: "abcd", SHA256: strings.Repeat("a", 64),
			Functions: []patchmeta.Function{{Name: "compute"}}}}}
}

func rpmq(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("rpm", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rpm %q: %v\n%s", args, err, out)
	}
	return string(out)
}

// The patch RPM: its name, exact Requires, files in the uuid directory, the source RPM
// with the sources, and a %preun whose failure stops the erase.
func TestBuildInstallErase(t *testing.T) {
	dir := t.TempDir()
	obj := filepath.Join(dir, "scdemo.upatch")
	os.WriteFile(obj, []byte("\x7fELF not really"), 0o644)
	src := filepath.Join(dir, "fix.patch")
	os.WriteFile(src, []byte("--- a\n+++ b\n"), 0o644)
	out, err := Build(context.Background(), filepath.Join(dir, "top"), Input{Patch: testPatch(),
		Payload: []string{obj}, Sources: []string{src}}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(out.RPM) != "patch-scdemo-1.0-1-HP001-1-2.x86_64.rpm" {
		t.Errorf("RPM name %s", out.RPM)
	}
	req := rpmq(t, "-qp", "--requires", out.RPM)
	for _, want := range []string{"scdemo = 3:1.0-1", "syscare"} {
		if !strings.Contains(req, want+"\n") {
			t.Errorf("requires %q lack %q", req, want)
		}
	}
	files := rpmq(t, "-qlp", out.RPM)
	d := "/usr/lib/syscare/patches/" + uuid
	if files != d+"\n"+d+"/patch.json\n"+d+"/scdemo.upatch\n" {
		t.Errorf("files:\n%s", files)
	}
	if desc := rpmq(t, "-qp", "--qf", "%{DESCRIPTION}", out.RPM); !strings.Contains(desc, "100% of the bugs") {
		t.Errorf("description %q", desc)
	}
	if s := rpmq(t, "-qlp", out.SRPM); !strings.Contains(s, "fix.patch") || !strings.Contains(s, "scdemo.upatch") {
		t.Errorf("source RPM files:\n%s", s)
	}

	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	if b, err := os.ReadFile("/bin/busybox"); err == nil {
		os.WriteFile(filepath.Join(root, "bin/sh"), b, 0o755)
	} else {
		t.Fatal("busybox-static is needed for scriptlets in a test root")
	}
	syscare := filepath.Join(root, "usr/bin/syscare")
	os.WriteFile(syscare, []byte("#!/bin/sh\necho \"$@\" > /removed\nexit 1\n"), 0o755)
	rpmq(t, "--root", root, "-i", "--nodeps", out.RPM)
	if _, err := os.Stat(filepath.Join(root, d, "patch.json")); err != nil {
		t.Fatal(err)
	}
	p, err := patchmeta.Load(filepath.Join(root, d))
	if err != nil || p.UUID != uuid {
		t.Fatalf("installed patch.json: %v", err)
	}
	if err := exec.Command("rpm", "--root", root, "-e", "--nodeps", "patch-scdemo-1.0-1-HP001").Run(); err == nil {
		t.Error("erase succeeded although syscare remove failed")
	}
	if _, err := os.Stat(filepath.Join(root, d, "scdemo.upatch")); err != nil {
		t.Error("a failed erase removed the patch files")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "removed")); string(b) != "remove "+uuid+"\n" {
		t.Errorf("%%preun ran syscare with %q", b)
	}
	os.WriteFile(syscare, []byte("#!/bin/sh\nexit 0\n"), 0o755)
	rpmq(t, "--root", root, "-e", "--nodeps", "patch-scdemo-1.0-1-HP001")
	if _, err := os.Stat(filepath.Join(root, d)); !os.IsNotExist(err) {
		t.Errorf("patch directory left after erase: %v", err)
	}
}
