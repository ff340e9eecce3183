package testenv

import (
	"os"
	"testing"
)

// NeedRoot runs the test only as root; why says what root is needed for (ptrace, mount
// namespaces, uprobes...). Without root it fails in CI and skips elsewhere.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "needs root: "+why)
}
