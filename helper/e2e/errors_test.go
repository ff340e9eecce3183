package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/dbus"
)

// TestClearErrorsThroughTheHelper: what the operator sees for a damaged patch. A patch
// object cut short names the byte where it ends and what lay beyond; a patch.json with
// several problems is refused for the same one at every rescan and helper start.
func TestClearErrorsThroughTheHelper(t *testing.T) {
	s := newSandbox(t)
	good := fx.objects["greet2"]
	cut := patchSpec{uuid: "77777777-0000-4000-8000-000000000007", entity: "77777777-0000-4000-8000-0000000000e7",
		name: "HP007", object: "greet2-cut", funcs: []string{"greet"}}
	fx.objects[cut.object] = good[:len(good)-200]
	defer delete(fx.objects, cut.object)
	s.install(cut)
	v := s.startVictim()
	e := s.fails("apply", cut.uuid)
	if !strings.Contains(e, "victim.o: invalid patch object: parse ELF: truncated: the file ends at byte ") ||
		!strings.Contains(e, "inside the section header table") {
		t.Fatalf("apply of a truncated object: %s", e)
	}
	if st := s.status(cut.uuid); st != "NOT-APPLIED" {
		t.Fatalf("after the refused apply: %s", st)
	}
	s.waitOutput(v, "1 10")

	bad := filepath.Join(s.root, "usr/lib/syscare/patches/88888888-0000-4000-8000-000000000008")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "patch.json"), []byte(`{"schema": 1, "uuid": "88888888-0000-4000-8000-000000000008",
 "name": "bad name", "version": "1 1", "release": "", "arch": "x86_64", "kind": "user",
 "target": {"name": "victim", "version": "1 0", "release": "1", "arch": "x86_64"},
 "entities": [{"uuid": "88888888-0000-4000-8000-0000000000e8", "file": "v.o", "target_path": "/usr/bin/victim",
   "sha256": "`+strings.Repeat("0", 64)+`", "functions": [{"name": "greet"}]}]}`), 0o644)
	var reasons []string
	for i := 0; i < 6; i++ {
		if i == 3 {
			s.killHelper()
		} else {
			s.must("rescan")
		}
		var list []syscarebus.ListEntry
		json.Unmarshal([]byte(s.must("--json", "list")), &list)
		for _, l := range list {
			if l.Status == syscarebus.StatusBroken {
				reasons = append(reasons, l.Problem)
			}
		}
	}
	want := `invalid patch metadata: name "bad name" is empty or has characters RPM does not allow`
	if len(reasons) != 6 || !strings.Contains(reasons[0], want) {
		t.Fatalf("broken reasons %q, want 6 saying %q", reasons, want)
	}
	for _, r := range reasons {
		if r != reasons[0] {
			t.Fatalf("the reason changed between reads: %q", reasons)
		}
	}
}
