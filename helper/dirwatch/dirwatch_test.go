package dirwatch

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatchSeesPatchDirectory: a patch directory created, a file written into it, and the
// directory removed each lead to a call, and calls stop once the context ends.
func TestWatchSeesPatchDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "patches")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls atomic.Int32
	if err := Watch(ctx, dir, 10*time.Millisecond, func() { calls.Add(1) }); err != nil {
		t.Fatal(err)
	}
	// change runs do and waits for a call that comes after it.
	change := func(what string, do func() error) {
		t.Helper()
		time.Sleep(50 * time.Millisecond) // let the calls of the last change settle
		before := calls.Load()
		if err := do(); err != nil {
			t.Fatal(err)
		}
		// A hang guard: the call comes after the 10 ms settle, later on a loaded machine.
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && calls.Load() == before; {
			time.Sleep(10 * time.Millisecond)
		}
		if calls.Load() == before {
			t.Fatalf("no call after %s", what)
		}
	}
	p1 := filepath.Join(dir, "p1")
	change("mkdir", func() error { return os.Mkdir(p1, 0o755) })
	change("write", func() error { return os.WriteFile(filepath.Join(p1, "patch.json"), []byte("{}"), 0o644) })
	change("remove", func() error { return os.RemoveAll(p1) })
	cancel()
	time.Sleep(100 * time.Millisecond)
	n := calls.Load()
	os.Mkdir(filepath.Join(dir, "p2"), 0o755)
	time.Sleep(100 * time.Millisecond)
	if calls.Load() != n {
		t.Fatal("called after the context ended")
	}
}
