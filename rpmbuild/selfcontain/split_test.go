package selfcontain

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/symbols"
)

const hello = `#include <stdio.h>
static __attribute__((noipa)) int answer(void) { return 42; }
int main(void) { printf("%d\n", answer()); return 0; }
`

// SplitDebug leaves a stripped program that still runs, with the same build-id as
// the debug copy, which holds the symbol table (local symbols included).
func TestSplitDebug(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "hello.c")
	os.WriteFile(src, []byte(hello), 0o644)
	bin, debug := filepath.Join(dir, "hello"), filepath.Join(t.TempDir(), "hello.debug")
	cc(t, "-O2", "-g", "-Wl,--build-id", "-o", bin, src)
	before, _ := os.Stat(bin)
	if err := SplitDebug(context.Background(), bin, debug); err != nil {
		t.Fatal(err)
	}
	ef, err := symbols.Open(bin, symbols.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ef.HasSymtab() {
		t.Errorf("%s still has a symbol table (debug file %q)", bin, ef.DebugFile)
	}
	if after, _ := os.Stat(bin); after.Mode() != before.Mode() {
		t.Errorf("mode %v, was %v", after.Mode(), before.Mode())
	}
	if out, err := exec.Command(bin).CombinedOutput(); err != nil || string(out) != "42\n" {
		t.Errorf("stripped program: %q, %v", out, err)
	}
	binID, err := debuginfo.BuildID(bin)
	if err != nil {
		t.Fatal(err)
	}
	debugID, err := debuginfo.BuildID(debug)
	if err != nil {
		t.Fatal(err)
	}
	if binID != debugID {
		t.Errorf("build-ids differ: program %s, debug copy %s", binID, debugID)
	}
	f, err := elfsafe.Open(debug)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range syms {
		found = found || s.Name == "answer"
	}
	if !found {
		t.Errorf("debug copy lacks the static function answer")
	}
	if f.Section(".debug_info") == nil {
		t.Errorf("debug copy lacks .debug_info")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("files left in %s: %v", dir, ents)
	}
}

// What cannot be split is refused with the reason, and nothing is written.
func TestSplitDebugRefusals(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "hello.c")
	os.WriteFile(src, []byte(hello), 0o644)
	noID, stripped, text := filepath.Join(dir, "noid"), filepath.Join(dir, "stripped"), filepath.Join(dir, "text")
	cc(t, "-O2", "-Wl,--build-id=none", "-o", noID, src)
	cc(t, "-O2", "-s", "-Wl,--build-id", "-o", stripped, src)
	os.WriteFile(text, []byte("#!/bin/sh\necho 42\n"), 0o755)
	for bin, want := range map[string]string{
		noID:                          "has no GNU build-id",
		stripped:                      "has no .symtab: it is stripped already",
		text:                          "text",
		filepath.Join(dir, "no-such"): "no such file",
	} {
		before, _ := os.ReadFile(bin)
		debug := filepath.Join(dir, "out.debug")
		err := SplitDebug(context.Background(), bin, debug)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", bin, err, want)
		}
		if after, _ := os.ReadFile(bin); !bytes.Equal(before, after) {
			t.Errorf("%s was changed", bin)
		}
		if _, err := os.Stat(debug); err == nil {
			t.Errorf("%s: a debug file was written", bin)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 4 {
		t.Errorf("files left in %s: %v", dir, ents)
	}
}
