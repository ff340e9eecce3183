// Package prodhost checks, for tests, that a binary is as a production host has it:
// stripped, with no debuginfo where the loader looks (under root), so that a patch
// applies there only if it carries the offsets of what it uses. It is apart from
// testenv because it reads ELF files with runtime/symbols, which testenv must not
// import (runtime packages' own tests use testenv).
package prodhost

import (
	"testing"

	"github.com/syscare/syscare/runtime/symbols"
)

// Check fails the test when the loader finds a symbol table for one of paths (files
// on this machine), looking for debuginfo under root ("" for the host's own places).
func Check(t testing.TB, root string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		ef, err := symbols.Open(path, symbols.Options{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		if ef.HasSymtab() {
			t.Fatalf("%s: the loader finds a symbol table (debug file %q): not a production host", path, ef.DebugFile)
		}
	}
}
