package state

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRoundTripAndOrder(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "var/lib/syscare")}
	snap, err := s.Load(CurrentFile)
	if err != nil || len(snap.Entries) != 0 {
		t.Fatalf("missing file: %v %v", snap, err)
	}
	snap = &Snapshot{BootID: "b", Seq: 3, Entries: []Entry{
		{UUID: "a", State: "ACCEPTED", Seq: 3}, {UUID: "b", State: "ACTIVED", Seq: 1}}}
	if err := s.Save(CurrentFile, snap); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load(CurrentFile)
	if err != nil {
		t.Fatal(err)
	}
	if got.Schema != SchemaVersion || got.BootID != "b" || len(got.Entries) != 2 {
		t.Fatalf("got %+v", got)
	}
	if o := got.Sorted(); o[0].UUID != "b" || o[1].UUID != "a" {
		t.Fatalf("order %+v", o)
	}
	left, _ := filepath.Glob(filepath.Join(s.Dir, ".*tmp*"))
	if len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestCorrupt(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	for _, c := range []string{"{", `{"schema": 99, "entries": []}`, `{"schema":1,"bogus":1}`} {
		os.WriteFile(filepath.Join(s.Dir, CurrentFile), []byte(c), 0o600)
		if _, err := s.Load(CurrentFile); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: err %v, want ErrCorrupt", c, err)
		}
	}
}

// TestPlantedSymlinkNotFollowed: a symlink at the state file's name, or at a temp
// file's, never leads a write elsewhere: Save replaces the link by rename, and the
// cleanup at start removes links without touching their targets.
func TestPlantedSymlinkNotFollowed(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	victim := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(victim, []byte("precious\n"), 0o644)
	os.Symlink(victim, filepath.Join(s.Dir, CurrentFile))
	os.Symlink(victim, filepath.Join(s.Dir, ".state.json.tmp999"))
	os.WriteFile(filepath.Join(s.Dir, ".saved.json.tmp1"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(s.Dir, "keep.tmp"), []byte("x"), 0o600)
	removed, err := s.CleanTemp()
	if err != nil || len(removed) != 2 {
		t.Fatalf("clean: %v %v", removed, err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "keep.tmp")); err != nil {
		t.Fatalf("a file that is no temp file was removed: %v", err)
	}
	if err := s.Save(CurrentFile, &Snapshot{Seq: 1}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("symlink followed: %q", b)
	}
	if st, err := os.Lstat(filepath.Join(s.Dir, CurrentFile)); err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", st, err)
	}
}
