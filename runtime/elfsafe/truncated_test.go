package elfsafe_test

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchobj"
)

// patchObject compiles a small upatch.h patch object.
func patchObject(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "p.c")
	os.WriteFile(src, []byte("#include <upatch.h>\nstatic const char msg[] = \"patched\";\n"+
		"const char *f_v2(void) { return msg; }\nUPATCH_FUNC(f, f_v2);\n"), 0o644)
	inc, _ := filepath.Abs("../include")
	obj := filepath.Join(dir, "p.o")
	if out, err := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", inc, "-o", obj, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTruncatedPatchObjectSaysWhere: a patch object cut short anywhere is refused
// with the byte where it ends and what lay beyond, never a bare "EOF", whether it is
// parsed from memory or from a file.
func TestTruncatedPatchObjectSaysWhere(t *testing.T) {
	good := patchObject(t)
	f, err := elf.NewFile(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	text := f.Section(".text.f_v2")
	if text == nil || text.Size == 0 {
		t.Fatal("no .text.f_v2 in the fixture")
	}
	shoff := binary.LittleEndian.Uint64(good[40:])
	shend := shoff + uint64(len(f.Sections))*64
	moved := pastEnd(good, f, text)
	textOff := uint64(len(good) - 2)
	cases := []struct {
		name string
		at   int
		want string
	}{
		{"identification", 10, "the file ends at byte 10, inside the 16-byte ELF identification"},
		{"elf header", 40, "the file ends at byte 40, inside the 64-byte ELF header"},
		{"section headers", int(shend) - 100, fmt.Sprintf("the file ends at byte %d, inside the section header table (bytes %d..%d)", shend-100, shoff, shend)},
		{"section data", len(good), fmt.Sprintf(`section ".text.f_v2": truncated: the file ends at byte %d, 2 bytes into the section's %d bytes at offset %d`,
			textOff+2, text.Size, textOff)},
	}
	for _, c := range cases {
		data := good[:c.at]
		if c.name == "section data" {
			data = moved[:c.at]
		}
		_, err := patchobj.ParseBytes(data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v\nwant an error saying %q", c.name, err, c.want)
		}
		// patchobj formats section errors with %v; the sentinel is checked on elfsafe's own.
		var eerr error
		if c.name == "section data" {
			ef, _ := elfsafe.NewFile(bytes.NewReader(data))
			_, eerr = elfsafe.SectionData(ef.Section(text.Name))
		} else {
			_, eerr = elfsafe.NewFile(bytes.NewReader(data))
		}
		if !errors.Is(eerr, elfsafe.ErrTruncated) || !strings.Contains(eerr.Error(), strings.TrimPrefix(c.want, `section ".text.f_v2": `)) {
			t.Errorf("%s: elfsafe: %v, want ErrTruncated", c.name, eerr)
		}
		if err != nil && strings.HasSuffix(err.Error(), "EOF") {
			t.Errorf("%s: bare EOF: %v", c.name, err)
		}
		// From a file, and from a reader that tells no size, the same words.
		p := filepath.Join(t.TempDir(), "p.o")
		os.WriteFile(p, data, 0o644)
		fd, _ := os.Open(p)
		_, ferr := patchobj.Parse(fd)
		fd.Close()
		_, rerr := patchobj.Parse(sizeless{bytes.NewReader(data)})
		if err == nil || ferr == nil || rerr == nil || ferr.Error() != err.Error() || rerr.Error() != err.Error() {
			t.Errorf("%s: from memory %v, from a file %v, sizeless %v", c.name, err, ferr, rerr)
		}
	}
	if _, err := patchobj.ParseBytes(good); err != nil {
		t.Fatalf("the whole object: %v", err)
	}
}

// pastEnd returns good with section s's data moved to its last 2 bytes: the headers
// parse, the section runs past the end of the file. (gcc puts the section header
// table last, so a plain cut reaches the table first.)
func pastEnd(good []byte, f *elf.File, s *elf.Section) []byte {
	out := append([]byte(nil), good...)
	le := binary.LittleEndian
	shoff := le.Uint64(out[40:])
	for i, c := range f.Sections {
		if c == s {
			le.PutUint64(out[shoff+uint64(i)*64+24:], uint64(len(out)-2))
		}
	}
	return out
}

type sizeless struct{ r *bytes.Reader }

func (s sizeless) ReadAt(p []byte, off int64) (int, error) { return s.r.ReadAt(p, off) }
