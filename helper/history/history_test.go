package history

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
)

func TestAddKeepsTheLastRuns(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "state"), Keep: 3}
	if rs, err := s.Load(); err != nil || len(rs) != 0 {
		t.Fatalf("empty history: %v %v", rs, err)
	}
	for i := 0; i < 5; i++ {
		if err := s.Add(syscarebus.Record{Time: Now(), Source: "policy", Result: syscarebus.RunOK, Summary: string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.Load()
	if err != nil || len(rs) != 3 || rs[0].Summary != "c" || rs[2].Summary != "e" || rs[2].Time.IsZero() {
		t.Fatalf("history: %+v %v", rs, err)
	}
	// A corrupt file is reported by Load and started afresh by Add, saying so.
	os.WriteFile(filepath.Join(s.Dir, FileName), []byte("{"), 0o644)
	if _, err := s.Load(); err == nil {
		t.Fatal("corrupt history loaded")
	}
	if err := s.Add(syscarebus.Record{Time: time.Now(), Result: syscarebus.RunOK, Summary: "f"}); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.Load(); len(rs) != 2 || !strings.Contains(rs[0].Summary, "started afresh") || rs[1].Summary != "f" {
		t.Fatalf("after a corrupt file: %+v", rs)
	}
}

// The history is never written into a directory another user could plant files in.
func TestAddRefusesAnOpenDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	os.MkdirAll(dir, 0o777)
	os.Chmod(dir, 0o777)
	err := Store{Dir: dir}.Add(syscarebus.Record{Result: syscarebus.RunOK})
	if err == nil || !strings.Contains(err.Error(), "closed to others") {
		t.Fatalf("world-writable state directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); err == nil {
		t.Fatal("history written into a world-writable directory")
	}
}
