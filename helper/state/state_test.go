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
