package debuginfo

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// A shared library with the cases of name resolution the builder meets: a global and a
// static of the same name, a global of hidden visibility (local once linked), two
// statics of one name, a function taken from libc, and a 4-byte function followed by
// padding.
func TestLocatorResolves(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"a.c": `#include <stdio.h>
__attribute__((noipa)) int dup(int x) { return x + 1; }
__attribute__((visibility("hidden"), noipa)) int hid(int x) { return x * 3; }
static int loc = 5;
__attribute__((noipa)) int tiny(int x) { return x + 1; }
int usea(int x) { printf("%d\n", x); return dup(x) + hid(x) + loc++ + tiny(x); }
`,
		"b.c": `static __attribute__((noipa)) int dup(int x) { return x - 1; }
static int loc = 7;
int useb(int x) { return dup(x) + loc++; }
`,
	}
	var srcs []string
	for name, src := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, p)
	}
	lib := filepath.Join(dir, "lib.so")
	args := append([]string{"-O2", "-g", "-fPIC", "-shared", "-o", lib}, srcs...)
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	f, err := elf.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]elf.Symbol{} // name -> definitions in .symtab order
	for _, s := range syms {
		if s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) != elf.STT_SECTION && elf.ST_TYPE(s.Info) != elf.STT_FILE {
			want[s.Name] = append(want[s.Name], s)
		}
	}
	l, err := NewLocator(lib)
	if err != nil {
		t.Fatal(err)
	}

	global := func(name string) (patchobj.Offset, bool) {
		t.Helper()
		off, ok, err := l.Global(name)
		if err != nil {
			t.Fatalf("Global(%s): %v", name, err)
		}
		return off, ok
	}
	// dup: the global wins a by-name reference over b.c's static.
	var dupGlobal elf.Symbol
	for _, s := range want["dup"] {
		if elf.ST_BIND(s.Info) == elf.STB_GLOBAL {
			dupGlobal = s
		}
	}
	if len(want["dup"]) != 2 || dupGlobal.Value == 0 {
		t.Fatalf("fixture: dup definitions %+v", want["dup"])
	}
	if off, ok := global("dup"); !ok || off.Value != dupGlobal.Value || off.Type != elf.STT_FUNC || off.Size != dupGlobal.Size {
		t.Errorf("Global(dup) = %+v %v, want the global at %#x", off, ok, dupGlobal.Value)
	}
	// hid: hidden, so LOCAL in the linked library, and still what a reference binds to.
	if h := want["hid"]; len(h) != 1 || elf.ST_BIND(h[0].Info) != elf.STB_LOCAL {
		t.Fatalf("fixture: hid %+v, want one local", h)
	} else if off, ok := global("hid"); !ok || off.Value != h[0].Value {
		t.Errorf("Global(hid) = %+v %v, want %#x", off, ok, h[0].Value)
	}
	// printf comes from libc; nosuch from nowhere: both left to the loader.
	if _, ok := global("printf"); ok {
		t.Error("Global(printf) resolved in the library that imports it")
	}
	if _, ok := global("nosuch"); ok {
		t.Error("Global(nosuch) resolved")
	}
	// loc: two statics, no global: a by-name reference is ambiguous, a position is not.
	if _, _, err := l.Global("loc"); err == nil || !strings.Contains(err.Error(), "2 local ones") {
		t.Errorf("Global(loc): %v, want an ambiguity error", err)
	}
	if len(want["loc"]) != 2 {
		t.Fatalf("fixture: loc %+v", want["loc"])
	}
	for pos, s := range want["loc"] {
		off, err := l.Symbol("loc", uint64(pos+1), false)
		if err != nil || off.Value != s.Value || off.Size != 4 || off.Type != elf.STT_OBJECT || off.Room != 0 {
			t.Errorf("Symbol(loc, %d) = %+v, %v; want %#x, 4 bytes", pos+1, off, err, s.Value)
		}
	}
	if _, err := l.Symbol("loc", 0, false); err == nil {
		t.Error("Symbol(loc, 0) picked one of two")
	}
	if _, err := l.Symbol("loc", 3, false); err == nil {
		t.Error("Symbol(loc, 3) found a third")
	}
	// tiny: 4 bytes; the jump may use the padding up to the next symbol.
	tiny, err := l.Symbol("tiny", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if tiny.Size >= 5 || tiny.Room < 5 || tiny.Room > 16 {
		t.Errorf("tiny = %+v: want fewer than 5 bytes, room 5 to 16", tiny)
	}
	for _, s := range syms {
		if s.Section == want["tiny"][0].Section && s.Value > tiny.Value && s.Value < tiny.Value+tiny.Room {
			t.Errorf("room of tiny (%d) covers %s at %#x", tiny.Room, s.Name, s.Value)
		}
	}
	// No function's room runs past the end of its section (the last one of .text).
	f, err = elf.Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, defs := range want {
		if len(defs) != 1 || elf.ST_TYPE(defs[0].Info) != elf.STT_FUNC {
			continue
		}
		off, err := l.Symbol(name, 0, true)
		if err != nil {
			t.Fatalf("Symbol(%s): %v", name, err)
		}
		sec := f.Sections[defs[0].Section]
		if off.Value+off.Room > sec.Addr+sec.Size {
			t.Errorf("room of %s (%#x+%d) runs past the end of %s at %#x", name, off.Value, off.Room, sec.Name, sec.Addr+sec.Size)
		}
	}
}
