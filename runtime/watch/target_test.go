package watch

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"testing"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// TestProbePoints checks where each kind of file is probed against the symbols the linker
// recorded: e_entry for executables, _init (DT_INIT) or the constructor (first DT_INIT_ARRAY
// entry, stored in place, as a RELA addend or as a RELR word) for libraries.
func TestProbePoints(t *testing.T) {
	if fix.buildErr != nil {
		t.Fatal(fix.buildErr)
	}
	cases := []struct {
		path string
		kind kind
		sym  string // symbol at the probe; "" means e_entry
	}{
		{fix.pie, kindExecutable, ""},
		{fix.noPIE, kindExecutable, ""},
		{fix.static, kindExecutable, ""},
		{fix.uselib, kindExecutable, ""},
		{fix.lib, kindLibrary, "_init"},
		{fix.libIA, kindLibrary, "libvictim_init"},
		{fix.libRel, kindLibrary, "libvictim_init"},
		{fix.libRELR, kindLibrary, "libvictim_init"},
	}
	for _, c := range cases {
		if c.path == "" {
			continue // optional fixture not built here
		}
		pp, err := findProbePoint(c.path)
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		f, err := elf.Open(c.path)
		if err != nil {
			t.Fatal(err)
		}
		want := f.Entry
		if c.sym != "" {
			want = symbolValue(t, f, c.sym)
		}
		if pp.kind != c.kind || pp.vaddr != want {
			t.Errorf("%s: %v at %#x, want %v at %#x (%s)", c.path, pp.kind, pp.vaddr, c.kind, want, c.sym)
		}
		// The file offset must hold the same bytes as the code at that address.
		text := f.Section(".text")
		var init []byte
		if s := f.Section(".init"); s != nil {
			init, _ = s.Data()
		}
		code, _ := text.Data()
		got := make([]byte, 8)
		raw, _ := os.ReadFile(c.path)
		copy(got, raw[pp.offset:])
		var wantBytes []byte
		switch {
		case want >= text.Addr && want < text.Addr+text.Size:
			wantBytes = code[want-text.Addr:]
		case init != nil && want >= f.Section(".init").Addr:
			wantBytes = init[want-f.Section(".init").Addr:]
		}
		if len(wantBytes) < 8 || !bytes.Equal(got, wantBytes[:8]) {
			t.Errorf("%s: bytes at file offset %#x are % x, want the code at %#x", c.path, pp.offset, got, want)
		}
		f.Close()
	}

	if fix.libRELR != "" {
		f, _ := elf.Open(fix.libRELR)
		dyn, _ := dynamicEntries(f)
		const dtRELR = elf.DynTag(36) // not named by debug/elf
		if _, ok := dyn[dtRELR]; !ok {
			t.Errorf("%s has no DT_RELR: the fixture does not test what it claims", fix.libRELR)
		}
		f.Close()
	}
	if _, err := findProbePoint(fix.libBare); !errors.Is(err, ErrNoInit) {
		t.Errorf("library without initializer: %v, want ErrNoInit", err)
	}
	for _, p := range []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6"} {
		if pp, err := findProbePoint(p); err == nil && pp.kind != kindLibrary {
			// libc.so.6 is runnable (it has PT_INTERP) but is a library.
			t.Errorf("%s: %v, want library", p, pp.kind)
		}
	}
	if _, err := findProbePoint("testdata/victim.c"); !errors.Is(err, elfsafe.ErrMalformed) && err == nil {
		t.Error("a C source file was accepted as ELF")
	}
}

func symbolValue(t testing.TB, f *elf.File, name string) uint64 {
	t.Helper()
	syms, _ := f.Symbols()
	dsyms, _ := f.DynamicSymbols()
	for _, s := range append(syms, dsyms...) {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("no symbol %s", name)
	return 0
}

// FuzzProbePoint: no input that debug/elf parses makes probePointOf panic. Seeds are the fixtures.
func FuzzProbePoint(f *testing.F) {
	for _, p := range []string{fix.pie, fix.noPIE, fix.lib, fix.libIA, fix.libBare} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ef, err := elfsafe.NewFile(bytes.NewReader(b))
		if err != nil {
			return
		}
		// Not guarded: probePointOf itself must not panic (it only reads program headers).
		_, _ = probePointOf(ef)
	})
}
