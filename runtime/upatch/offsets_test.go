package upatch

import (
	"debug/elf"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// offsetEntry is one .upatch.offsets entry a test writes by hand.
type offsetEntry struct {
	kind  patchobj.OffsetKind
	name  string
	value uint64
	size  uint64
	room  uint64
	typ   elf.SymType
}

// targetOffsets reads, from the unstripped target, the entries syscare build would
// record for fix_rich.c: the four replaced functions and the three symbols of the
// target it uses. libc's snprintf and strlen stay dynamic.
func targetOffsets(t *testing.T, bin string) map[string]offsetEntry {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]offsetEntry{}
	for _, s := range syms {
		typ := elf.ST_TYPE(s.Info)
		switch s.Name {
		case "greet", "bump", "tls_read", "work":
			room := s.Size
			if s.Size < jmpAbs { // up to the next symbol of the section, as the builder does
				next := s.Value + maxJumpLen
				for _, o := range syms {
					if o.Section == s.Section && o.Value > s.Value && o.Value < next {
						next = o.Value
					}
				}
				room = max(s.Size, next-s.Value)
			}
			out[s.Name] = offsetEntry{patchobj.OffsetFunc, s.Name, s.Value, s.Size, room, typ}
		case "counter", "calls.0", "tls_value":
			out[s.Name] = offsetEntry{patchobj.OffsetSymbol, s.Name, s.Value, s.Size, 0, typ}
		}
	}
	if len(out) != 7 {
		t.Fatalf("target symbols %v, want 7", out)
	}
	return out
}

// buildOffsetsPatch compiles fix_rich.c with the given .upatch.offsets entries.
func buildOffsetsPatch(t *testing.T, target string, entries map[string]offsetEntry, pflags []string) *patchobj.Object {
	t.Helper()
	dir := t.TempDir()
	src := fmt.Sprintf("#include %q\n", testdata("fix_rich.c"))
	i := 0
	for _, e := range entries {
		src += fmt.Sprintf(`static const char name%d[] __attribute__((section(".upatch.strings"))) = %q;
static const struct upatch_offset off%d __attribute__((section(".upatch.offsets"), used, aligned(8))) =
	{ name%d, 0, %#x, %d, %d, %d | %d << 8 };
`, i, e.name, i, i, e.value, e.size, e.room, e.kind, e.typ)
		i++
	}
	c := filepath.Join(dir, "fix.c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, "fix.o")
	gcc(t, append(append([]string{"-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", includeDir(),
		fmt.Sprintf(`-DTARGET_BUILD_ID="%s"`, buildIDHex(t, target))}, pflags...), c, "-o", obj)...)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	o, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if !o.SelfContained() {
		t.Fatal("the object carries no offsets")
	}
	return o
}

// A self-contained patch applies to a stripped target whose debuginfo is nowhere:
// replaced functions, a global, a function-static and a TLS variable of the target come
// from the recorded offsets, libc from the process. Offsets that do not fit the
// running binary are refused, naming the symbol, and the process is left untouched.
func TestSelfContainedOnStrippedTarget(t *testing.T) {
	for _, flags := range [][]string{nil, {"-no-pie"}} {
		name, pflags := "pie", []string(nil)
		if flags != nil {
			name, pflags = "no-pie", []string{"-fno-pie"}
		}
		t.Run(name, func(t *testing.T) {
			bin := buildVictim(t, flags...)
			offs := targetOffsets(t, bin)
			if out, err := exec.Command("strip", "--strip-all", bin).CombinedOutput(); err != nil {
				t.Fatalf("strip: %v\n%s", err, out)
			}
			good := buildOffsetsPatch(t, bin, offs, pflags)
			// Offsets that do not fit: past the end of the file's segments, and a
			// replaced function placed in writable data.
			outside := copyOffsets(offs)
			g := outside["greet"]
			g.value = 0x7fff0000
			outside["greet"] = g
			inData := copyOffsets(offs)
			g = inData["greet"]
			g.value = offs["counter"].value
			inData["greet"] = g
			badData := copyOffsets(offs)
			c := badData["counter"]
			c.value += 0x7fff0000
			badData["counter"] = c

			v := start(t, bin, nil)
			v.expect(t, "greet=1")
			e := NewEngine(t.TempDir()) // no debuginfo anywhere under this root
			for what, c := range map[string]struct {
				offs map[string]offsetEntry
				want string
			}{
				"function outside the file": {outside, `function "greet": recorded offset 0x7fff0000`},
				"function in data":          {inData, `function "greet": recorded offset`},
				"data outside the file":     {badData, `symbol "counter": recorded offset`},
			} {
				err := e.Patch(v.pid(), buildOffsetsPatch(t, bin, c.offs, pflags), opts(uuid1))
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "the patch does not fit this binary") {
					t.Fatalf("%s: %v, want an error with %q", what, err, c.want)
				}
				if anon := patchMappings(t, v.pid()); anon != 0 {
					t.Fatalf("%s: the refused patch left %d mappings", what, anon)
				}
			}
			v.expect(t, "greet=1")

			if err := e.Patch(v.pid(), good, opts(uuid1)); err != nil {
				t.Fatal(err)
			}
			line := v.expect(t, "greet=60")
			for _, want := range []string{"work=101", "tls=1041"} {
				if !strings.Contains(line, want) {
					t.Errorf("patched line %q lacks %q", line, want)
				}
			}
			if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
				t.Fatal(err)
			}
			v.expect(t, "greet=1")
		})
	}
}

func copyOffsets(m map[string]offsetEntry) map[string]offsetEntry { return maps.Clone(m) }

// Data of another library (glibc's stderr, which the PIE victim has no copy of) is out
// of a PC-relative reach: the refusal says how to compile the patch, and the patch
// compiled that way reads it through the patch's own GOT.
func TestFarDataOfAnotherLibrary(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil)
	v.expect(t, "greet=1")
	e := NewEngine("/")
	_, direct := buildPatch(t, "fix_stderr.c", bin, "")
	err := e.Patch(v.pid(), direct, opts(uuid1))
	if err == nil || !strings.Contains(err.Error(), "-mno-direct-extern-access") {
		t.Fatalf("direct access to far data: %v, want a refusal naming the compiler option", err)
	}
	if anon := patchMappings(t, v.pid()); anon != 0 {
		t.Fatalf("the refused patch left %d mappings", anon)
	}
	_, viaGOT := buildPatch(t, "fix_stderr.c", bin, "", "-mno-direct-extern-access")
	if err := e.Patch(v.pid(), viaGOT, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=12")
	if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=1")
}
