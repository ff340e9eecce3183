package symbols

import (
	"strings"
	"testing"
)

// The cache never opens a device that a process mapped (it would be reached through
// /proc/PID/map_files): it refuses anything but a regular file before opening it.
func TestCacheRefusesDevices(t *testing.T) {
	c := NewCache(Options{})
	if _, err := c.Open("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Open(/dev/zero) = %v, want a refusal", err)
	}
	if c.Len() != 0 {
		t.Fatal("a refused file was cached")
	}
}
