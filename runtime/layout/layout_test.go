package layout

import (
	"bytes"
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

	"golang.org/x/arch/x86/x86asm"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/symbols"
)

// fixSrc is a hand-written patch that exercises every relocation gcc -O2 emits
// for the things a fix does: a new static helper, printf through the PLT, a
// string literal, a global and a function-static of the target, two TLS
// variables (initial-exec: GOTTPOFF; local-exec: TPOFF32), a weak function
// tested for presence (GOTPCREL), an array of the target (32S without PIC), a
// far function (trampoline), and hand-written PC64/PC32 data words.
const fixSrc = `
#include <upatch.h>
#include <stdio.h>
extern int counter;
extern int bump_count __asm__("count.0");
extern __thread int tls_small __attribute__((tls_model("initial-exec")));
extern __thread int tls_le __attribute__((tls_model("local-exec")));
extern void far_func(void);
extern int table[16];
extern void maybe(void) __attribute__((weak));
#ifdef FAR_DATA
extern int far_data;
int reads_far(void) { return far_data; }
UPATCH_FUNC(reader, reads_far);
#endif
static __attribute__((noipa)) int twice(int x) { return 2 * x; }
int greet_v2(int i) {
	counter++;
	bump_count += 2;
	printf("new greeting %d %d\n", counter, tls_small + tls_le);
	if (maybe) maybe();
	return twice(21) + table[i & 15];
}
int calls_far(void) { far_func(); return 1; }
#ifndef NO_PC32_DATA /* a 32-bit PC-relative word cannot reach a far target */
__asm__(".section .data.pc64,\"aw\"\n.globl pc64_ref\npc64_ref: .quad counter - .\n.long counter - .\n.previous");
#else
__asm__(".section .data.pc64,\"aw\"\n.globl pc64_ref\npc64_ref: .quad counter - .\n.previous");
#endif
UPATCH_FUNC(greet, greet_v2);
UPATCH_FUNC(caller, calls_far);
`

// buildObject compiles a patch with the documented flags plus extra ones.
func buildObject(t testing.TB, src string, flags ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	inc := filepath.Join(filepath.Dir(file), "..", "include")
	c := filepath.Join(dir, "fix.c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	o := filepath.Join(dir, "fix.o")
	args := append([]string{"-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", inc}, flags...)
	out, err := exec.Command("gcc", append(args, c, "-o", o)...).CombinedOutput()
	if err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	b, err := os.ReadFile(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type fakeSym struct {
	addr   uint64
	isFunc bool
}

// fakeResolver stands for the target process: addresses are given, "missing" is not found.
type fakeResolver struct {
	syms  map[string]fakeSym
	tls   map[string]int64
	calls []string
}

func (r *fakeResolver) Resolve(name string, pos uint64) (uint64, bool, error) {
	r.calls = append(r.calls, fmt.Sprintf("%s/%d", name, pos))
	s, ok := r.syms[name]
	if !ok {
		return 0, false, fmt.Errorf("symbol %q: %w", name, symbols.ErrNotFound)
	}
	return s.addr, s.isFunc, nil
}

// TLSModule puts every TLS variable of the fake target in module 2, at its TLS offset
// negated (any distinct value does).
func (r *fakeResolver) TLSModule(name string, pos uint64) (uint64, uint64, error) {
	v, ok := r.tls[name]
	if !ok {
		return 0, 0, fmt.Errorf("TLS symbol %q: %w", name, symbols.ErrNotFound)
	}
	return 2, uint64(-v), nil
}

func (r *fakeResolver) TLSOffset(name string, pos uint64) (int64, error) {
	v, ok := r.tls[name]
	if !ok {
		return 0, fmt.Errorf("TLS symbol %q: %w", name, symbols.ErrNotFound)
	}
	return v, nil
}

const (
	gib = 1 << 30
	mib = 1 << 20
)

// targetNear places the target's symbols around near, as a process would, with
// far_func 5 GiB away (in another library), and far_data 3 GiB away.
func targetNear(near uint64) *fakeResolver {
	return &fakeResolver{
		syms: map[string]fakeSym{
			"counter":  {near + 0x4010, false},
			"count.0":  {near + 0x4024, false},
			"table":    {near + 0x4040, false},
			"printf":   {near + 0x1030, true}, // the target's PLT entry
			"far_func": {near + 5*gib, true},
			"far_data": {near + 3*gib, false},
		},
		tls: map[string]int64{"tls_small": -192, "tls_le": -128},
	}
}

// expectedS is the address a relocation's symbol must have received.
func expectedS(t *testing.T, o *patchobj.Object, img *Image, r *fakeResolver, sym uint32) (uint64, bool) {
	s := o.Symbols[sym]
	if !s.Defined() {
		if s.Bind == elf.STB_WEAK {
			if _, ok := r.syms[s.Name]; !ok {
				return 0, false
			}
		}
		f, ok := r.syms[s.Name]
		if !ok {
			t.Fatalf("test resolver lacks %q", s.Name)
		}
		return f.addr, f.isFunc
	}
	for _, p := range img.Sections {
		if p.Index == int(s.Section) {
			return p.Addr + s.Value, s.Type == elf.STT_FUNC
		}
	}
	t.Fatalf("symbol %q: section %d not placed", s.Name, s.Section)
	return 0, false
}

// at returns the image bytes at run-time address a.
func at(img *Image, a, n uint64) []byte {
	if a >= img.Base && a+n <= img.Base+uint64(len(img.Text)) {
		return img.Text[a-img.Base : a-img.Base+n]
	}
	d := img.Base + uint64(len(img.Text))
	if a >= d && a+n <= d+uint64(len(img.Data)) {
		return img.Data[a-d : a-d+n]
	}
	return nil
}

// decodeAt disassembles section bytes from the start and returns the
// instruction covering offset off, with its start offset.
func decodeAt(t *testing.T, code []byte, off uint64) (x86asm.Inst, uint64) {
	t.Helper()
	for pc := uint64(0); pc < uint64(len(code)); {
		inst, err := x86asm.Decode(code[pc:], 64)
		if err != nil {
			t.Fatalf("decode at %#x: %v", pc, err)
		}
		if off >= pc && off < pc+uint64(inst.Len) {
			return inst, pc
		}
		pc += uint64(inst.Len)
	}
	t.Fatalf("no instruction covers %#x", off)
	return x86asm.Inst{}, 0
}

// effective returns the target of a rel32 branch or a RIP-relative operand.
func effective(inst x86asm.Inst, end uint64) (uint64, bool) {
	for _, a := range inst.Args {
		switch a := a.(type) {
		case x86asm.Rel:
			return end + uint64(int64(a)), true
		case x86asm.Mem:
			if a.Base == x86asm.RIP {
				// x86asm leaves disp32 zero-extended.
				return end + uint64(int64(int32(a.Disp))), true
			}
		}
	}
	return 0, false
}

// checkRelocs verifies every relocation of every loaded section independently
// of the linker: code through the disassembler (where does the instruction
// really go), data words against the psABI formulas.
func checkRelocs(t *testing.T, o *patchobj.Object, img *Image, r *fakeResolver) map[elf.R_X86_64]int {
	t.Helper()
	seen := map[elf.R_X86_64]int{}
	for _, ps := range img.Sections {
		sec := o.Sections[ps.Index]
		code := at(img, ps.Addr, sec.Size)
		exec := sec.Flags&elf.SHF_EXECINSTR != 0
		for _, rel := range sec.Relocs {
			seen[rel.Type]++
			P := ps.Addr + rel.Offset
			name := o.Symbols[rel.Sym].Name
			where := fmt.Sprintf("%s+%#x %v %q", sec.Name, rel.Offset, rel.Type, name)
			switch rel.Type {
			case elf.R_X86_64_TPOFF32:
				inst, _ := decodeAt(t, code, rel.Offset)
				m, ok := inst.Args[1].(x86asm.Mem)
				if !ok || m.Segment != x86asm.FS || int64(int32(m.Disp)) != r.tls[name]+rel.Addend {
					t.Errorf("%s: %v, want %%fs:%d", where, inst, r.tls[name])
				}
				continue
			case elf.R_X86_64_GOTTPOFF:
				inst, start := decodeAt(t, code, rel.Offset)
				slot, _ := effective(inst, ps.Addr+start+uint64(inst.Len))
				if v := at(img, slot, 8); v == nil || int64(binary.LittleEndian.Uint64(v)) != r.tls[name] {
					t.Errorf("%s: %v: GOT slot %#x does not hold %d", where, inst, slot, r.tls[name])
				}
				continue
			}
			S, isFunc := expectedS(t, o, img, r, rel.Sym)
			want := S + uint64(rel.Addend)
			if !exec {
				f := at(img, P, 8)
				var got uint64
				switch rel.Type {
				case elf.R_X86_64_64:
					got = binary.LittleEndian.Uint64(f)
				case elf.R_X86_64_PC64:
					got, want = binary.LittleEndian.Uint64(f), want-P
				case elf.R_X86_64_PC32:
					got, want = uint64(int64(int32(binary.LittleEndian.Uint32(f)))), want-P
				default:
					t.Errorf("%s: unexpected in data", where)
				}
				if got != want {
					t.Errorf("%s: field %#x, want %#x", where, got, want)
				}
				continue
			}
			inst, start := decodeAt(t, code, rel.Offset)
			end := ps.Addr + start + uint64(inst.Len)
			tgt, rip := effective(inst, end)
			// The instruction's own end replaces the addend's -4/-5/-8: the
			// target computed by the CPU must be the symbol itself (plus any
			// offset into it that the addend carries beyond the instruction end).
			wantTgt := S + uint64(rel.Addend) + (end - P)
			switch rel.Type {
			case elf.R_X86_64_PC32, elf.R_X86_64_PLT32:
				if !rip {
					t.Errorf("%s: %v is not RIP-relative", where, inst)
				} else if tgt != wantTgt {
					// Must be a trampoline to the symbol.
					tr := at(img, tgt, 14)
					if !(isFunc || rel.Type == elf.R_X86_64_PLT32) || tr == nil || !bytes.Equal(tr[:6], []byte{0xff, 0x25, 0, 0, 0, 0}) ||
						binary.LittleEndian.Uint64(tr[6:]) != wantTgt {
						t.Errorf("%s: %v goes to %#x, want %#x or a trampoline to it", where, inst, tgt, wantTgt)
					}
				}
			case elf.R_X86_64_GOTPCREL, elf.R_X86_64_GOTPCRELX, elf.R_X86_64_REX_GOTPCRELX:
				if inst.Op == x86asm.LEA {
					if tgt != wantTgt {
						t.Errorf("%s: relaxed %v goes to %#x, want %#x", where, inst, tgt, wantTgt)
					}
				} else if v := at(img, tgt, 8); v == nil || binary.LittleEndian.Uint64(v) != S {
					t.Errorf("%s: %v: GOT slot %#x does not hold %#x", where, inst, tgt, S)
				}
			case elf.R_X86_64_32, elf.R_X86_64_32S:
				f := binary.LittleEndian.Uint32(code[rel.Offset:])
				got := uint64(f)
				if rel.Type == elf.R_X86_64_32S {
					got = uint64(int64(int32(f)))
				}
				if got != want {
					t.Errorf("%s: field %#x, want %#x (%v)", where, got, want, inst)
				}
			default:
				t.Errorf("%s: unexpected relocation in code", where)
			}
		}
	}
	return seen
}

// funcInsts disassembles the replacement function of old.
type insn struct {
	x86asm.Inst
	PC uint64 // run-time address
}

func funcInsts(t *testing.T, img *Image, old string) []insn {
	for _, f := range img.Funcs {
		if f.OldName != old {
			continue
		}
		code := at(img, f.New, f.NewSize)
		var out []insn
		for pc := 0; pc < len(code); {
			inst, err := x86asm.Decode(code[pc:], 64)
			if err != nil {
				t.Fatalf("%s: decode: %v", old, err)
			}
			out = append(out, insn{inst, f.New + uint64(pc)})
			pc += inst.Len
		}
		return out
	}
	t.Fatalf("no replacement for %q", old)
	return nil
}

func TestLink(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		base  uint64
		want  []elf.R_X86_64 // relocation types the variant must exercise
	}{
		{"pie", []string{"-fpie"}, 0x7f0000000000, []elf.R_X86_64{elf.R_X86_64_PC32, elf.R_X86_64_PLT32, elf.R_X86_64_GOTPCREL, elf.R_X86_64_GOTTPOFF, elf.R_X86_64_TPOFF32, elf.R_X86_64_PC64}},
		{"pic", []string{"-fpic"}, 0x7f0000000000, []elf.R_X86_64{elf.R_X86_64_REX_GOTPCRELX, elf.R_X86_64_GOTPCREL}},
		// Non-PIC code uses absolute 32-bit addresses: load below 2 GiB, like a -no-pie executable.
		{"nopic", []string{"-fno-pic"}, 0x10000000, []elf.R_X86_64{elf.R_X86_64_32, elf.R_X86_64_32S}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := patchobj.ParseBytes(buildObject(t, fixSrc, tc.flags...))
			if err != nil {
				t.Fatal(err)
			}
			p, err := NewPlan(o)
			if err != nil {
				t.Fatal(err)
			}
			if p.TextSize%pageSize != 0 || p.DataSize%pageSize != 0 || p.DataSize == 0 {
				t.Errorf("sizes %#x/%#x not page aligned (or no data region)", p.TextSize, p.DataSize)
			}
			target := tc.base - 64*mib
			r := targetNear(target)
			img, err := p.Link(tc.base, r)
			if err != nil {
				t.Fatal(err)
			}
			if uint64(len(img.Text)) != p.TextSize || uint64(len(img.Data)) != p.DataSize {
				t.Fatalf("image %d+%d bytes, plan %d+%d", len(img.Text), len(img.Data), p.TextSize, p.DataSize)
			}
			if img.DataInit <= 0 || img.DataInit > len(img.Data) {
				t.Errorf("DataInit = %d of %d", img.DataInit, len(img.Data))
			}
			for _, b := range img.Data[img.DataInit:] {
				if b != 0 {
					t.Fatalf("non-zero byte after DataInit")
				}
			}
			seen := checkRelocs(t, o, img, r)
			for _, typ := range tc.want {
				if seen[typ] == 0 {
					t.Errorf("fixture does not exercise %v (saw %v)", typ, seen)
				}
			}

			// Replacement functions.
			if len(img.Funcs) != len(o.Funcs) || len(img.Funcs) != 2 {
				t.Fatalf("Funcs = %+v", img.Funcs)
			}
			for i, f := range img.Funcs {
				if f.OldName != o.Funcs[i].OldName || f.New != symbolAddr(t, o, img, o.NewName(o.Funcs[i])) {
					t.Errorf("Funcs[%d] = %+v, want %s at the address of %s", i, f, o.Funcs[i].OldName, o.NewName(o.Funcs[i]))
				}
			}
			for _, f := range img.Funcs {
				if f.New < img.Base || f.New+f.NewSize > img.Base+uint64(len(img.Text)) || f.NewSize == 0 {
					t.Errorf("%+v outside the text region", f)
				}
			}

			// greet_v2: printf is called directly (in reach), twice is the patch's own,
			// the format string is the literal, all read from the image.
			var calls []uint64
			var strs []string
			for _, inst := range funcInsts(t, img, "greet") {
				end := inst.PC + uint64(inst.Len)
				tgt, ok := effective(inst.Inst, end)
				if !ok {
					continue
				}
				if inst.Op == x86asm.CALL {
					calls = append(calls, tgt)
				}
				if inst.Op == x86asm.LEA {
					if b := at(img, tgt, 32); b != nil {
						strs = append(strs, string(b[:bytes.IndexByte(b, 0)]))
					}
				}
			}
			if tc.name == "nopic" {
				// mov $.LC0, %edi: the 32-bit immediate is checked by checkRelocs;
				// read the string it names.
				for _, inst := range funcInsts(t, img, "greet") {
					if inst.Op == x86asm.MOV {
						if imm, ok := inst.Args[1].(x86asm.Imm); ok {
							if b := at(img, uint64(imm), 32); b != nil {
								strs = append(strs, string(b[:bytes.IndexByte(b, 0)]))
							}
						}
					}
				}
			}
			if !contains(calls, r.syms["printf"].addr) {
				t.Errorf("greet_v2 calls %#x, none is printf at %#x", calls, r.syms["printf"].addr)
			}
			twice := symbolAddr(t, o, img, "twice")
			if !contains(calls, twice) {
				t.Errorf("greet_v2 calls %#x, none is twice at %#x", calls, twice)
			}
			if !containsStr(strs, "new greeting %d %d\n") {
				t.Errorf("greet_v2 references strings %q, not its format", strs)
			}

			// calls_far: far_func is 5 GiB away: through a trampoline.
			// far_func, and when loaded above 2 GiB the call to the missing
			// weak "maybe" (address 0), which the code guards but still encodes.
			wantTramp := 1
			if tc.base > 2*gib {
				wantTramp = 2
			}
			if img.TrampolinesUsed != wantTramp {
				t.Errorf("TrampolinesUsed = %d, want %d", img.TrampolinesUsed, wantTramp)
			}
			for _, inst := range funcInsts(t, img, "caller") {
				if inst.Op != x86asm.CALL && inst.Op != x86asm.JMP {
					continue
				}
				tgt, _ := effective(inst.Inst, inst.PC+uint64(inst.Len))
				tr := at(img, tgt, 14)
				if tr == nil || tgt < img.Trampolines {
					t.Errorf("far call %v goes to %#x, not a trampoline", inst, tgt)
					continue
				}
				tj, err := x86asm.Decode(tr, 64)
				if err != nil || tj.Op != x86asm.JMP || binary.LittleEndian.Uint64(tr[6:]) != r.syms["far_func"].addr {
					t.Errorf("trampoline %x (%v) does not jump to far_func %#x", tr, tj, r.syms["far_func"].addr)
				}
			}

			// Positions from .upatch.syms reach the resolver; the weak missing
			// symbol "maybe" resolved to 0 without error.
			if !containsStr(r.calls, "count.0/0") || !containsStr(r.calls, "maybe/0") {
				t.Errorf("resolver calls %q", r.calls)
			}
		})
	}
}

func contains(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func symbolAddr(t *testing.T, o *patchobj.Object, img *Image, name string) uint64 {
	for _, s := range o.Symbols {
		if s.Name == name && s.Defined() {
			for _, p := range img.Sections {
				if p.Index == int(s.Section) {
					return p.Addr + s.Value
				}
			}
		}
	}
	t.Fatalf("symbol %q not placed", name)
	return 0
}

func TestFarDataRefused(t *testing.T) {
	o, err := patchobj.ParseBytes(buildObject(t, fixSrc, "-fpie", "-DFAR_DATA"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(o)
	if err != nil {
		t.Fatal(err)
	}
	base := uint64(0x7f0000000000)
	_, err = p.Link(base, targetNear(base-64*mib))
	if err == nil || !strings.Contains(err.Error(), `"far_data"`) || !strings.Contains(err.Error(), "out of ±2 GiB reach") ||
		!strings.Contains(err.Error(), ".text.reads_far+0x") {
		t.Fatalf("Link error = %v, want far_data out of reach naming section and offset", err)
	}
	// In reach, the same object links.
	r := targetNear(base - 64*mib)
	r.syms["far_data"] = fakeSym{base - 32*mib, false}
	if _, err := p.Link(base, r); err != nil {
		t.Fatal(err)
	}
}

func TestLinkErrors(t *testing.T) {
	o, err := patchobj.ParseBytes(buildObject(t, fixSrc, "-fpie"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(o)
	if err != nil {
		t.Fatal(err)
	}
	base := uint64(0x7f0000000000)
	r := targetNear(base - 64*mib)
	delete(r.syms, "counter")
	if _, err := p.Link(base, r); err == nil || !strings.Contains(err.Error(), `resolve "counter"`) || !errors.Is(err, symbols.ErrNotFound) {
		t.Errorf("missing symbol: %v", err)
	}
	r = targetNear(base - 64*mib)
	delete(r.tls, "tls_le")
	if _, err := p.Link(base, r); err == nil || !strings.Contains(err.Error(), "tls_le") {
		t.Errorf("missing TLS symbol: %v", err)
	}
	if _, err := p.Link(base+1, targetNear(base)); err == nil {
		t.Errorf("unaligned base accepted")
	}
	// TPOFF32 out of range.
	r = targetNear(base - 64*mib)
	r.tls["tls_le"] = -1 << 40
	if _, err := p.Link(base, r); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("huge TLS offset: %v", err)
	}
	// Absolute 32-bit relocations of non-PIC code cannot be loaded high.
	o2, err := patchobj.ParseBytes(buildObject(t, fixSrc, "-fno-pic"))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := NewPlan(o2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p2.Link(base, targetNear(base-64*mib)); err == nil || !strings.Contains(err.Error(), "R_X86_64_32") {
		t.Errorf("non-PIC code linked at %#x: %v", base, err)
	}
}

// TestPatchWins: a patch that defines a symbol the target also has uses its own.
func TestPatchWins(t *testing.T) {
	src := `
#include <upatch.h>
int counter = 5;   /* shadows the target's counter */
int get_v2(void) { return counter; }
UPATCH_FUNC(get, get_v2);
`
	o, err := patchobj.ParseBytes(buildObject(t, src, "-fpic"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(o)
	if err != nil {
		t.Fatal(err)
	}
	base := uint64(0x7f0000000000)
	r := targetNear(base - 64*mib)
	img, err := p.Link(base, r)
	if err != nil {
		t.Fatal(err)
	}
	checkRelocs(t, o, img, r)
	for _, c := range r.calls {
		if strings.HasPrefix(c, "counter/") {
			t.Errorf("resolver asked for counter although the patch defines it")
		}
	}
	addr := symbolAddr(t, o, img, "counter")
	if addr < img.Base+uint64(len(img.Text)) || binary.LittleEndian.Uint32(at(img, addr, 4)) != 5 {
		t.Errorf("counter at %#x is not the patch's initialised data", addr)
	}
}
