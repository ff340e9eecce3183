// Package testenv decides, for every test of the tree, whether a test that needs
// something of the machine (root, a tool, the long end-to-end switch) runs, skips with
// its reason, or fails: where the machine is expected to have it (CI sets SYSCARE_CI=1),
// a missing prerequisite is a failure, never a silent skip. It uses only the standard
// library so that any package's tests can import it without an import cycle.
package testenv

import (
	"os"
	"testing"
)

// CIVar is the variable that says the machine is expected to have everything the tests
// need (root, ptrace, uprobes, qemu, the tools tests/deps.sh installs); .ci/run sets it.
const CIVar = "SYSCARE_CI"

// CI reports whether missing prerequisites are failures here.
func CI() bool { return os.Getenv(CIVar) == "1" }

// Require lets the test go on when ok; otherwise it fails the test in CI and skips it
// elsewhere, naming what is missing in both cases.
func Require(t testing.TB, ok bool, missing string) {
	t.Helper()
	if ok {
		return
	}
	if CI() {
		t.Fatalf("%s (%s=1: this machine must have it)", missing, CIVar)
	}
	t.Skipf("%s (skipped here; %s=1 makes it a failure)", missing, CIVar)
}
