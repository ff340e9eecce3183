package testenv

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// SoakTrials returns how many trials a kill campaign runs: the number in the variable
// env (`make soak` sets it high) or, unset or not a positive number, def (the short
// version `make test` runs).
func SoakTrials(env string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(env)); err == nil && n > 0 {
		return n
	}
	return def
}

// SoakLoad starts SYSCARE_SOAK_LOAD busy loops (default none) for the duration of the
// test, so that a campaign can run on a loaded machine.
func SoakLoad(t testing.TB) {
	t.Helper()
	n, _ := strconv.Atoi(os.Getenv("SYSCARE_SOAK_LOAD"))
	for i := 0; i < n; i++ {
		c := exec.Command("sh", "-c", "while :; do :; done")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	}
}
