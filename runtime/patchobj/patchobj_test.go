package patchobj

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// buildObject compiles C source with the flags the README documents for hand-written patches.
func buildObject(t testing.TB, src string) []byte {
	t.Helper()
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	inc := filepath.Join(filepath.Dir(file), "..", "include")
	c := filepath.Join(dir, "fix.c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	o := filepath.Join(dir, "fix.o")
	out, err := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", inc, c, "-o", o).CombinedOutput()
	if err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	b, err := os.ReadFile(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const handWritten = `
#include <upatch.h>
#include <stdio.h>
extern int counter;
extern int dup;
static int twice(int x) { return 2 * x; }
int greet_v2(void) { counter++; dup++; printf("hi %s\n", "there"); return twice(21); }
static int helper_v2(int a) { return a + 1; }
UPATCH_FUNC(greet, greet_v2);
UPATCH_FUNC_POS(helper, helper_v2, 2);
UPATCH_SYMBOL_POS(dup, 3);
UPATCH_TARGET_BUILD_ID("9f3cAB01");
`

func TestParseHandWritten(t *testing.T) {
	o, err := ParseBytes(buildObject(t, handWritten))
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Funcs) != 2 {
		t.Fatalf("got %d funcs, want 2", len(o.Funcs))
	}
	byName := map[string]Func{}
	for _, f := range o.Funcs {
		byName[f.OldName] = f
	}
	if f := byName["greet"]; f.OldPos != 0 || o.NewName(f) != "greet_v2" {
		t.Errorf("greet = %+v (%s)", f, o.NewName(f))
	}
	if f := byName["helper"]; f.OldPos != 2 || o.NewName(f) != "helper_v2" {
		t.Errorf("helper = %+v (%s)", f, o.NewName(f))
	}
	if got := o.Target("dup"); got != (TargetSym{"dup", 3}) {
		t.Errorf("Target(dup) = %+v, want dup/3", got)
	}
	if got := o.Target("counter"); got != (TargetSym{"counter", 0}) {
		t.Errorf("Target(counter) = %+v", got)
	}
	if got := string(o.TargetBuildID); got != "\x9f\x3c\xab\x01" {
		t.Errorf("build-id = %x", o.TargetBuildID)
	}
	loaded := map[string]bool{}
	for _, s := range o.Sections {
		if s != nil && s.Load {
			loaded[s.Name] = true
		}
	}
	for _, want := range []string{".text.greet_v2"} {
		if !loaded[want] {
			t.Errorf("section %s not loaded; loaded: %v", want, loaded)
		}
	}
	for name := range loaded {
		if strings.HasPrefix(name, ".upatch") || strings.HasPrefix(name, ".eh_frame") {
			t.Errorf("section %s must not be loaded", name)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	good := buildObject(t, handWritten)
	cases := map[string]struct {
		obj  []byte
		want string
	}{
		"empty":        {nil, "invalid patch object"},
		"garbage":      {[]byte("this is not an ELF file at all, just text"), "invalid patch object"},
		"truncated":    {good[:len(good)/3], "invalid patch object"},
		"no funcs":     {buildObject(t, "#include <upatch.h>\nint f(void) { return 1; }"), "no .upatch.funcs"},
		"new tls":      {buildObject(t, "#include <upatch.h>\n__thread int t; int g(void){return t;}\nUPATCH_FUNC(f, g);"), "thread-local"},
		"bad build-id": {buildObject(t, "#include <upatch.h>\nint g(void){return 1;}\nUPATCH_FUNC(f, g);\nUPATCH_TARGET_BUILD_ID(\"xyz\");"), "not a hexadecimal"},
	}
	wrongMachine := append([]byte(nil), good...)
	wrongMachine[18] = 0xb7 // EM_AARCH64
	cases["wrong machine"] = struct {
		obj  []byte
		want string
	}{wrongMachine, "EM_X86_64"}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseBytes(c.obj)
			if err == nil {
				t.Fatal("parsed without error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// withOffsets is a hand-written patch replacing f and using counter, plus the
// .upatch.offsets entries given as C initialisers of struct upatch_offset.
func withOffsets(entries ...string) string {
	src := `#include <upatch.h>
extern int counter;
int g(void) { return counter; }
UPATCH_FUNC(f, g);
static const char name_f[] __attribute__((section(".upatch.strings"))) = "f";
static const char name_counter[] __attribute__((section(".upatch.strings"))) = "counter";
`
	for i, e := range entries {
		src += fmt.Sprintf("static const struct upatch_offset off%d __attribute__((section(\".upatch.offsets\"), used, aligned(8))) = { %s };\n", i, e)
	}
	return src
}

const (
	offFunc    = "name_f, 0, 0x1130, 20, 24, UPATCH_OFFSET_FUNC | 2 << 8"
	offCounter = "name_counter, 0, 0x4010, 4, 0, UPATCH_OFFSET_SYMBOL | 1 << 8"
)

func TestParseOffsets(t *testing.T) {
	o, err := ParseBytes(buildObject(t, withOffsets(offFunc, offCounter, offCounter)))
	if err != nil {
		t.Fatal(err)
	}
	if !o.SelfContained() || o.Version != FormatVersion {
		t.Fatalf("self-contained %v, version %d", o.SelfContained(), o.Version)
	}
	if got, ok := o.FuncOffset(o.Funcs[0]); !ok || got != (Offset{Value: 0x1130, Size: 20, Room: 24, Type: elf.STT_FUNC}) {
		t.Errorf("offset of f = %+v, %v", got, ok)
	}
	if got, ok := o.SymbolOffset(o.Target("counter")); !ok || got != (Offset{Value: 0x4010, Size: 4, Type: elf.STT_OBJECT}) {
		t.Errorf("offset of counter = %+v, %v", got, ok)
	}
	if _, ok := o.SymbolOffset(TargetSym{Name: "counter", Pos: 2}); ok {
		t.Error("counter at position 2 has an offset")
	}
	hand, err := ParseBytes(buildObject(t, handWritten))
	if err != nil {
		t.Fatal(err)
	}
	if hand.SelfContained() {
		t.Error("a patch without .upatch.offsets is self-contained")
	}
}

// objcopy runs objcopy on obj and returns the result.
func objcopy(t *testing.T, obj []byte, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.o"), filepath.Join(dir, "out.o")
	if err := os.WriteFile(in, obj, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("objcopy", append(args, in, out)...).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRefusesFormat(t *testing.T) {
	good := buildObject(t, handWritten)
	dir := t.TempDir()
	word := func(name string, v ...uint32) string {
		var b []byte
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, x)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := map[string]struct {
		obj  []byte
		want string
	}{
		"format 1":      {objcopy(t, good, "--remove-section", VersionSection), "format 1"},
		"newer format":  {objcopy(t, good, "--update-section", VersionSection+"="+word("v3", 3)), "format 3 is newer than this runtime reads (2): update syscare"},
		"older format":  {objcopy(t, good, "--update-section", VersionSection+"="+word("v1", 1)), "format 1 is no longer read"},
		"merged differ": {objcopy(t, good, "--update-section", VersionSection+"="+word("v23", 2, 3)), "declare formats 2 and 3"},
		"offset kind":   {buildObject(t, withOffsets(offFunc, "name_counter, 0, 0x4010, 4, 0, 7 | 1 << 8")), "unknown kind 7"},
		"func type":     {buildObject(t, withOffsets("name_f, 0, 0x1130, 20, 24, UPATCH_OFFSET_FUNC | 1 << 8")), "want STT_FUNC"},
		"short room":    {buildObject(t, withOffsets("name_f, 0, 0x1130, 20, 8, UPATCH_OFFSET_FUNC | 2 << 8")), "room 8 is less than its size 20"},
		"data room":     {buildObject(t, withOffsets(offFunc, "name_counter, 0, 0x4010, 4, 4, UPATCH_OFFSET_SYMBOL | 1 << 8")), "room 4 set on a symbol"},
		"reserved":      {buildObject(t, withOffsets("name_f, 0, 0x1130, 20, 24, UPATCH_OFFSET_FUNC | 2 << 8 | 1 << 16")), "reserved bits"},
		"overflow":      {buildObject(t, withOffsets("name_f, 0, 0xfffffffffffffff0, 20, 24, UPATCH_OFFSET_FUNC | 2 << 8")), "overflow"},
		"two answers":   {buildObject(t, withOffsets(offFunc, offCounter, "name_counter, 0, 0x4020, 4, 0, UPATCH_OFFSET_SYMBOL | 1 << 8")), "resolved twice"},
		"func missing":  {buildObject(t, withOffsets(offCounter)), `no entry for the replaced function "f"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseBytes(c.obj)
			if err == nil {
				t.Fatal("parsed without error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(buildObject(f, handWritten))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseBytes(b)
		if err == nil && len(o.Funcs) == 0 {
			t.Fatal("parsed object without functions")
		}
	})
}
