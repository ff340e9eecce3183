package testenv

import (
	"os"
	"testing"
)

// E2EVar switches the long end-to-end tests on (`make test-e2e` sets it). A test is long
// when it boots a virtual machine, or downloads and builds a third-party source tree
// (tests/kernel, tests/upstream, tests/realworld: minutes each on a 2-core machine);
// everything else, real processes, dbus-daemon, rpm, dnf installroots and the demo
// included, runs in `make test`.
const E2EVar = "SYSCARE_E2E"

// E2E reports whether the long end-to-end tests run.
func E2E() bool { return os.Getenv(E2EVar) == "1" }

// NeedE2E runs the test only with the long end-to-end tests switched on; otherwise it
// skips it, saying how to run it. This is a deliberate switch, so it skips in CI too:
// CI runs `make test-e2e` as its own step.
func NeedE2E(t testing.TB) {
	t.Helper()
	if !E2E() {
		t.Skipf("long end-to-end test: runs with %s=1 (make test-e2e)", E2EVar)
	}
}
