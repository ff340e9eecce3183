package upatch

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// A program that defines and exports a function of the library being patched runs its
// own copy: the patch of the library's copy is refused for it, with the function and
// the program named, and the process is left as it was.
func TestPatchRefusesInterposedFunction(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libvague.so")
	gcc(t, "-O2", "-g", "-fPIC", "-shared", testdata("libvague.c"), "-o", lib)
	user := filepath.Join(dir, "vagueuser")
	gcc(t, "-O2", testdata("vagueuser.c"), "-L", dir, "-lvague", "-Wl,-rpath,"+dir, "-o", user)
	v := start(t, user, nil)
	v.expect(t, "report=8") // the library calls the program's lib_value
	_, obj := buildPatch(t, "fix_lib.c", lib, "", "-fPIC")
	e := NewEngine("/")
	o := opts(uuid1)
	o.Binary = lib
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ErrInterposed) {
		t.Fatalf("Patch: %v, want ErrInterposed", err)
	}
	for _, want := range []string{"lib_value", user} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %s", err, want)
		}
	}
	if n := patchMappings(t, v.pid()); n != 0 {
		t.Errorf("%d patch mappings left in the process", n)
	}
	v.expect(t, "report=8")
}
