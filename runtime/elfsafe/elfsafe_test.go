package elfsafe

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

func TestGuardTurnsPanicIntoError(t *testing.T) {
	err := Guard("parse x", func() error { panic("index out of range") })
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "parse x") {
		t.Fatalf("Guard = %v", err)
	}
	if err := Guard("ok", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestBuildIDMatchesReadelf(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "a.c")
	os.WriteFile(src, []byte("int main(void){return 0;}\n"), 0o644)
	bin := filepath.Join(dir, "a")
	if out, err := exec.Command("gcc", "-Wl,--build-id=sha1", src, "-o", bin).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command("readelf", "-n", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "Build" && f[1] == "ID:" {
			want = f[2]
		}
	}
	f, err := Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := BuildID(f.File)
	if err != nil || hex.EncodeToString(id) != want || want == "" {
		t.Fatalf("BuildID = %x, %v; readelf says %q", id, err, want)
	}
}

func TestMalformedInputIsAnError(t *testing.T) {
	good, err := os.ReadFile("/bin/true")
	testenv.Require(t, err == nil, "no /bin/true to mutate")
	// Corrupt section header fields one byte at a time: never a panic.
	for off := 0x20; off < 0x40; off++ {
		b := append([]byte(nil), good...)
		b[off] ^= 0xff
		if f, err := NewFile(bytes.NewReader(b)); err == nil {
			_, _ = Symbols(f)
			_, _ = DynamicSymbols(f)
			_, _ = BuildID(f)
		}
	}
	if _, err := NewFile(bytes.NewReader([]byte("\x7fELF garbage"))); err == nil {
		t.Fatal("garbage parsed")
	}
}

func FuzzNewFile(f *testing.F) {
	if b, err := os.ReadFile("/bin/true"); err == nil {
		f.Add(b[:4096])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if ef, err := NewFile(bytes.NewReader(b)); err == nil {
			_, _ = Symbols(ef)
			_, _ = BuildID(ef)
			for _, s := range ef.Sections {
				_, _ = SectionData(s)
			}
		}
	})
}
