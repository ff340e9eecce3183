package kbuild

import (
	"github.com/syscare/syscare/tests/testenv"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestInputsE2E makes (or finds cached) the kernel RPMs and checks what a packager's would
// hold: the source RPM's spec and config, the debuginfo's vmlinux under its release.
func TestInputsE2E(t *testing.T) {
	needE2E(t)
	start := time.Now()
	in := Prepare(t)
	t.Logf("kernel inputs ready in %v: %s, %s", time.Since(start).Round(time.Millisecond), in.SRPM, in.Debuginfo)
	out, err := exec.Command("rpm", "-qpl", in.SRPM).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "config-"+in.ABI) || !strings.Contains(string(out), "kernel.spec") {
		t.Errorf("source RPM lists %q (%v), want kernel.spec and config-%s", out, err, in.ABI)
	}
	out, err = exec.Command("rpm", "-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{SOURCERPM}\n", in.Debuginfo).CombinedOutput()
	want := "kernel-debuginfo " + in.Version + "-" + in.Release + " kernel-" + in.Version + "-" + in.Release + ".src.rpm"
	if err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("debuginfo RPM: %q (%v), want %q", out, err, want)
	}
	out, err = exec.Command("rpm", "-qpl", in.Debuginfo).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/usr/lib/debug/lib/modules/"+in.ABI+"/vmlinux") {
		t.Errorf("debuginfo RPM lists %q (%v)", out, err)
	}
	out, err = exec.Command("rpm", "-qpl", in.NoConfigSRPM).CombinedOutput()
	if err != nil || strings.Contains(string(out), "config-") {
		t.Errorf("config-less source RPM lists %q (%v)", out, err)
	}
}

// needE2E gates the long kernel tests (downloads of about 1 GB, a kernel tree
// prepared once, qemu boots) behind the long-test switch (make test-e2e).
func needE2E(t testing.TB) {
	t.Helper()
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "kernel build test (apt-get download into the shared cache)")
}
