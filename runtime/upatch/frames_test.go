package upatch

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// A thread whose stack holds stale copies of greet's address, but no frame of greet,
// does not block patching greet: the check walks real frames. A thread sleeping in a
// callee of hold still blocks patching hold: its return address is a real frame.
func TestStaleStackWordsDoNotBlock(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stale")
	gcc(t, "-O2", "-g", "-pthread", testdata("stale.c"), "-o", bin)
	v := start(t, bin, nil)
	v.expect(t, "greet=1")

	e := NewEngine("/")
	_, obj := buildPatch(t, "fix_greet.c", bin, "")
	o := opts(uuid1)
	o.Retries = 1
	if err := e.Patch(v.pid(), obj, o); err != nil {
		t.Fatalf("patch greet with stale words on a stack: %v", err)
	}
	v.expect(t, "greet=2")
	if err := e.Unpatch(v.pid(), uuid1, o); err != nil {
		t.Fatalf("unpatch: %v", err)
	}
	v.expect(t, "greet=1")

	_, holdObj := buildPatch(t, "fix_hold.c", bin, "")
	err := e.Patch(v.pid(), holdObj, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), `"hold"`) || !strings.Contains(err.Error(), "in a frame") {
		t.Fatalf("patch of hold while a thread returns into it: %v, want busy in a frame", err)
	}
	v.alive(t)
}
