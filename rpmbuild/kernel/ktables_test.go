package kernel

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/diff"
)

// jumpSrc has a function with a static-key jump entry whose key is a static variable
// of the unit (as a module's own static key is), made as the kernel's macros make it.
const jumpSrc = `
static long key[2];
int f(int x) {
	asm volatile("1: nop\n.pushsection __jump_table,\"aw\"\n .balign 8\n .long 1b - .\n .long 1b - .\n .quad %c0 - .\n .popsection\n" : : "i"(key));
	return x + FIX;
}
`

// TestModuleKeyRefused: in a module's translation unit, a carried jump entry whose key
// is a non-exported symbol of that module is refused, naming the function, the table
// and the symbol: livepatch would write its relocation only once the module loads,
// after the kernel has read the entry.
func TestModuleKeyRefused(t *testing.T) {
	var objs [2][]byte
	for i, fix := range []string{"1", "2"} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "k.c"), []byte("#define FIX "+fix+"\n"+jumpSrc), 0o644)
		cmd := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-o", "k.o", "k.c")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		objs[i], _ = os.ReadFile(filepath.Join(dir, "k.o"))
	}
	r, err := diff.Diff(bytes.NewReader(objs[0]), bytes.NewReader(objs[1]), diff.Options{Tables: carriedTables, AliasPrefix: "A_"})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkModuleTableRefs(obj, "mymod", map[string]bool{"other": true}); err != nil {
		t.Errorf("a key that is not the module's: %v", err)
	}
	err = checkModuleTableRefs(obj, "mymod", map[string]bool{"A_key": true})
	var u *diff.UnpatchableError
	if !errors.As(err, &u) || u.Function != "f" || u.Section != "__jump_table" || !strings.Contains(u.Reason, "A_key") || !strings.Contains(u.Reason, "mymod") {
		t.Fatalf("module key: %v, want a refusal of f's __jump_table entry naming A_key and mymod", err)
	}
	t.Log(err)
}
