package main

import (
	"regexp"
	"testing"
)

// newUUID gives version-4, variant-1 UUIDs in the canonical form, a new one
// each time.
func TestNewUUID(t *testing.T) {
	form := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		u, err := newUUID()
		if err != nil {
			t.Fatal(err)
		}
		if !form.MatchString(u) {
			t.Fatalf("uuid %q is not a canonical version-4 UUID", u)
		}
		if seen[u] {
			t.Fatalf("uuid %q came twice", u)
		}
		seen[u] = true
	}
}
