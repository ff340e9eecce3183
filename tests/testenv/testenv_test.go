package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The helpers' outcome is read from a child test binary, since a skip or a failure
// ends the test that calls them.
func TestRequireSkipsOrFails(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		Require(t, false, "needs a unicorn")
		return
	}
	for _, c := range []struct {
		ci, want string
	}{
		{"0", "--- SKIP"},
		{"1", "--- FAIL"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRequireSkipsOrFails$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", CIVar+"="+c.ci)
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), c.want) || !strings.Contains(string(out), "needs a unicorn") {
			t.Errorf("%s=%s: want %q and the reason, got\n%s", CIVar, c.ci, c.want, out)
		}
	}
}

func TestNeedE2ESkipsWithoutTheSwitch(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		NeedE2E(t)
		t.Log("ran")
		return
	}
	for _, c := range []struct {
		e2e, want string
	}{
		{"", "make test-e2e"},
		{"1", "ran"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNeedE2ESkipsWithoutTheSwitch$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", E2EVar+"="+c.e2e)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s=%q: want %q, got %v\n%s", E2EVar, c.e2e, c.want, err, out)
		}
	}
}
