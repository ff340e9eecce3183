package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNoRuntimeImports: the CLI talks to the helper only over D-Bus, so it must not link
// the patching runtime.
func TestNoRuntimeImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/syscare/syscare/runtime/") || strings.HasPrefix(p, "github.com/syscare/syscare/helper/manager") {
			t.Errorf("syscare imports %s", p)
		}
	}
}

func TestParse(t *testing.T) {
	o, err := parse([]string{"--bus", "session", "apply", "-f", "a", "b", "--json"})
	if err != nil || o.cmd != "apply" || !o.force || !o.json || o.bus != "session" || strings.Join(o.args, ",") != "a,b" {
		t.Fatalf("%+v %v", o, err)
	}
	o, _ = parse([]string{"build", "--force", "x"})
	if o.cmd != "build" || o.force || strings.Join(o.args, ",") != "--force,x" {
		t.Fatalf("build args not passed through: %+v", o)
	}
	o, err = parse([]string{"apply", "--health", "redis-cli ping", "--health=true", "--soak", "30s", "--interval=2", "--check-timeout", "500ms", "--accept", "x"})
	if err != nil || strings.Join(o.gate.health, "|") != "redis-cli ping|true" || o.gate.soak != 30*time.Second ||
		o.gate.interval != 2*time.Second || o.gate.checkTimeout != 500*time.Millisecond || !o.accept || strings.Join(o.args, ",") != "x" {
		t.Fatalf("health gate options: %+v %v", o, err)
	}
	var ue usageError
	for _, bad := range [][]string{{"apply"}, {"list", "x"}, {"frobnicate"}, {"--bogus", "list"}, {"upgrade"}, {"--accept", "remove", "x"},
		{"remove", "--health", "true", "x"}, {"apply", "--soak", "30s", "x"}, {"apply", "--health"},
		{"upgrade", "--health", "true", "--soak", "soon", "x"}, {"apply", "--health", " ", "x"}} {
		err := run(context.Background(), bad, &bytes.Buffer{}, &bytes.Buffer{})
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want usage error", bad, err)
		}
	}
}

// TestBuildExitStatus: scripts tell "no functional change" (3) and "cannot be hot
// patched" (4) apart by syscare-build's exit status, so "syscare build" must pass it on.
func TestBuildExitStatus(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho \"building $*\"\nexit $1\n"
	if err := os.WriteFile(filepath.Join(dir, "syscare-build"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	for _, code := range []int{3, 4, 1} {
		var out bytes.Buffer
		err := run(context.Background(), []string{"build", strconv.Itoa(code)}, &out, &bytes.Buffer{})
		var es exitStatus
		if !errors.As(err, &es) || int(es) != code {
			t.Errorf("exit %d: got %v, want exit status %d", code, err, code)
		}
		if !strings.Contains(out.String(), "building "+strconv.Itoa(code)) {
			t.Errorf("exit %d: child output not passed through: %q", code, out.String())
		}
	}
	if err := run(context.Background(), []string{"build", "0"}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Errorf("exit 0: %v", err)
	}
}

// TestRawJSONIndented: info and target pass the helper's JSON through; it is indented
// like list and status, and still the same document.
func TestRawJSONIndented(t *testing.T) {
	var b bytes.Buffer
	if err := printRawJSON(&b, `[{"uuid":"u","files":["/a"]}]`); err != nil {
		t.Fatal(err)
	}
	want := "[\n  {\n    \"uuid\": \"u\",\n    \"files\": [\n      \"/a\"\n    ]\n  }\n]\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
	b.Reset()
	if err := printRawJSON(&b, "not json"); err != nil || b.String() != "not json\n" {
		t.Errorf("invalid JSON: %q %v, want it printed as is", b.String(), err)
	}
}

// syscare reboot: bad lines are usage errors; --dry-run only says what it would do (the
// kexec boot itself is tested under qemu in tests/kernel).
func TestRebootDryRun(t *testing.T) {
	var ue usageError
	for _, bad := range [][]string{{"reboot", "--bogus"}, {"reboot", "now"}} {
		if err := run(context.Background(), bad, &bytes.Buffer{}, &bytes.Buffer{}); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want usage error", bad, err)
		}
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"--bus", "unix:path=/nonexistent", "reboot", "--no-kexec", "--dry-run"}, &out, &errOut)
	if err != nil || (out.String() != "would reboot now\n" && out.String() != "would run: systemctl reboot\n") ||
		!strings.Contains(errOut.String(), "cannot list the hot patches") {
		t.Fatalf("dry run: %v %q %q", err, out.String(), errOut.String())
	}
	out.Reset()
	err = run(context.Background(), []string{"--bus", "unix:path=/nonexistent", "reboot", "--kernel", "/nonexistent/vmlinuz", "--dry-run"}, &out, &errOut)
	if err != nil || !strings.Contains(out.String(), `would load /nonexistent/vmlinuz (initramfs "") with command line`) {
		t.Fatalf("dry run with a kernel: %v %q", err, out.String())
	}
}
