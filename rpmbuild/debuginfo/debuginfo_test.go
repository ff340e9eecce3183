package debuginfo

import (
	"context"
	"debug/elf"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/syscare/syscare/rpmbuild/internal/testpkg"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/elfsafe"
)

// The debuginfo RPM maps each shipped ELF to its build-id, which must be the build-id of
// the binary in the shipped RPM (not of any rebuild).
func TestLoadMatchLocate(t *testing.T) {
	p := testpkg.Build(t, "scdemo")
	dbg, bin := t.TempDir(), t.TempDir()
	ctx := context.Background()
	if err := rpmfile.Extract(ctx, p.Debuginfo, dbg, os.Stderr); err != nil {
		t.Fatal(err)
	}
	if err := rpmfile.Extract(ctx, p.RPM, bin, os.Stderr); err != nil {
		t.Fatal(err)
	}
	ix, err := Load(dbg, "scdemo")
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Targets) != 2 {
		t.Fatalf("targets %+v", ix.Targets)
	}
	for _, tg := range ix.Targets {
		f, err := elfsafe.Open(filepath.Join(bin, tg.Path))
		if err != nil {
			t.Fatalf("%s: %v", tg.Path, err)
		}
		id, _ := elfsafe.BuildID(f.File)
		f.Close()
		if hex.EncodeToString(id) != tg.BuildID {
			t.Errorf("%s: build-id %s, shipped binary has %x", tg.Path, tg.BuildID, id)
		}
	}
	// A build output matches by its file name.
	tg, err := ix.Match("/somewhere/BUILD/scdemo-1.0/libscmsg.so.1")
	if err != nil || filepath.Base(tg.Path) != "libscmsg.so.1" || !filepath.IsAbs(tg.Path) {
		t.Errorf("Match lib: %+v %v", tg, err)
	}
	if _, err := ix.Match("/x/not-shipped"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Match of an unshipped file: %v", err)
	}
	tg, _ = ix.Match("scdemo")
	if tg.Path != "/usr/bin/scdemo" {
		t.Fatalf("scdemo installed at %s", tg.Path)
	}

	prods, err := Producers(tg.DebugFile)
	if err != nil || len(prods) == 0 || ProducerVersion(prods[0]) == "" {
		t.Errorf("producers %q %v", prods, err)
	}

	loc, err := NewLocator(tg.DebugFile)
	if err != nil {
		t.Fatal(err)
	}
	// clamp and calls are static in both calc.c and table.c: positions 1 and 2 in
	// link order (main.o calc.o table.o); compute is unique.
	checks := []struct {
		name, file string
		fn         bool
		want       uint64
	}{
		{"compute", "/b/calc.c", true, 0},
		{"clamp", "/b/scdemo-1.0/calc.c", true, 1},
		{"clamp", "table.c", true, 2},
		{"calls", "calc.c", false, 1},
		{"calls", "table.c", false, 2},
	}
	for _, c := range checks {
		got, err := loc.Pos(c.name, c.file, c.fn)
		if err != nil || got != c.want {
			t.Errorf("Pos(%s, %s) = %d, %v; want %d", c.name, c.file, got, err, c.want)
		}
	}
	if _, err := loc.Pos("clamp", "main.c", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("Pos of clamp in main.c: %v", err)
	}
	if _, err := loc.Pos("nosuch", "main.c", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("Pos of a missing symbol: %v", err)
	}
	// The symbol order the locator counts is the one the debug file has.
	f, _ := elf.Open(tg.DebugFile)
	defer f.Close()
	syms, _ := f.Symbols()
	var files []string
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FILE {
			files = append(files, s.Name)
		}
	}
	if len(files) < 3 {
		t.Errorf("debug file has STT_FILE symbols %q", files)
	}
}

func TestProducerVersion(t *testing.T) {
	for in, want := range map[string]string{
		"GNU C17 12.2.0 -mtune=generic -march=x86-64 -g -O2": "12.2.0",
		"GNU C++17 13.1.1 20230614 -O2":                      "13.1.1",
		"clang version 16.0.0":                               "",
	} {
		if got := ProducerVersion(in); got != want {
			t.Errorf("ProducerVersion(%q) = %q, want %q", in, got, want)
		}
	}
}
