package termline

import (
	"bytes"
	"os"
	"testing"
)

// A shown line is erased before other output and only once; nothing is erased when no
// line is shown, so piped-like output between lines stays as written.
func TestLineClearsBeforeOtherOutput(t *testing.T) {
	var b bytes.Buffer
	l := New(&b)
	l.Clear()
	l.Do(func() { b.WriteString("warning\n") })
	l.Show("patch: 1 of 2 processes")
	l.Show("patch: 2 of 2 processes")
	l.Do(func() { b.WriteString("result\n") })
	l.Clear()
	want := "warning\n\r\033[Kpatch: 1 of 2 processes\r\033[Kpatch: 2 of 2 processes\r\033[Kresult\n"
	if b.String() != want {
		t.Fatalf("wrote %q, want %q", b.String(), want)
	}
}

func TestIsTerminal(t *testing.T) {
	if IsTerminal(&bytes.Buffer{}) {
		t.Fatal("a buffer is not a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Fatal("a regular file is not a terminal")
	}
}
