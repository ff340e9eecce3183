package diff

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// upatchHeader is runtime/include/upatch.h of this tree.
func upatchHeader() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "runtime", "include", "upatch.h")
}

// The way a refused layout change points to: the fix keeps the structure and keeps
// its new per-object state in a shadow variable (upatch.h, the marker that the data
// lives beside the objects). The builder takes it as any other change; the patch
// reaches the table through the one symbol the loader binds. The same source still
// builds into a plain program, where the shadow calls answer NULL.
func TestShadowVariableFixBuilds(t *testing.T) {
	orig := `#include <stdio.h>
struct conn { int id; int bytes; };
__attribute__((noipa)) int serve(struct conn *c) { c->bytes++; return c->bytes; }
int main(void) { struct conn c = { 1, 0 }; serve(&c); printf("%d\n", serve(&c)); return 0; }
`
	fixed := fmt.Sprintf(`#include <stdio.h>
#include %q
struct conn { int id; int bytes; };
struct conn_extra { unsigned long requests; };
__attribute__((noipa)) int serve(struct conn *c)
{
	struct conn_extra *x = upatch_shadow_get_or_alloc(c, 1, sizeof *x, 0, 0, 0);
	c->bytes++;
	if (!x)
		return c->bytes;
	return c->bytes + 100 * (int)++x->requests;
}
int main(void) { struct conn c = { 1, 0 }; serve(&c); printf("%%d\n", serve(&c)); return 0; }
`, upatchHeader())
	ob, pb := pair(t, "shadowfix", orig, fixed, "-fPIE")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{AliasPrefix: "__p_"})
	if err != nil {
		t.Fatalf("a fix that attaches its new state with a shadow variable: %v", err)
	}
	if got := r.Changed(); len(got) != 1 || got[0] != "serve" {
		t.Fatalf("changed %q, want [serve]\n%s", got, r)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	o, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var undefined []string
	for _, s := range o.Symbols {
		if !s.Defined() && s.Name != "" {
			undefined = append(undefined, s.Name)
		}
	}
	if !strings.Contains(strings.Join(undefined, " "), "__upatch_shadow_table") {
		t.Fatalf("the patch leaves %q undefined, want the shadow table among them", undefined)
	}

	// The fixed source as a plain program: no table, the old behaviour.
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "plain.c"), filepath.Join(dir, "plain")
	if err := os.WriteFile(src, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-O2", src, "-o", bin).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil || strings.TrimSpace(string(out)) != "2" {
		t.Fatalf("plain build of the fix: %q, %v; want 2", out, err)
	}
}
