package unwind

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The table of a real program describes each of its functions, and the rules at a
// function's first instruction say what the call left: the return address at CFA-8,
// CFA = rsp+8.
func TestParseProgram(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "p.c")
	bin := filepath.Join(dir, "p")
	os.WriteFile(src, []byte("__attribute__((noipa)) int f(int x) { return x * 3; }\nint main(void) { return f(1); }\n"), 0o644)
	if out, err := exec.Command("gcc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	tab, err := Parse(ef)
	if err != nil {
		t.Fatal(err)
	}
	syms, _ := ef.Symbols()
	var f elf.Symbol
	for _, s := range syms {
		if s.Name == "f" {
			f = s
		}
	}
	d := tab.find(f.Value)
	if d == nil || d.lo != f.Value || d.hi != f.Value+f.Size {
		t.Fatalf("description of f [%#x,%#x): %+v", f.Value, f.Value+f.Size, d)
	}
	st, err := d.rules(f.Value)
	if err != nil {
		t.Fatal(err)
	}
	if st.cfaReg != regRSP || st.cfaOff != 8 || st.regs[regRA] != (rule{ruleOffset, -8}) {
		t.Errorf("rules at f's entry: CFA r%d%+d, RA %+v; want rsp+8, RA at CFA-8", st.cfaReg, st.cfaOff, st.regs[regRA])
	}
	// One frame up from f's entry: the return address is read at the stack pointer.
	sp := uint64(0x7ffc0000)
	mem := func(a uint64) (uint64, bool) { return 0x401234, a == sp }
	regs := NewRegs(f.Value, [16]uint64{regRSP: sp})
	var pcs []uint64
	err = Walk(regs, []Module{{Lo: f.Value, Hi: f.Value + f.Size, Table: tab}}, mem, 8, func(fr Frame) bool {
		pcs = append(pcs, fr.PC)
		return true
	})
	if len(pcs) != 2 || pcs[1] != 0x401234 || err == nil {
		t.Errorf("walk from f: frames %#x, %v; want f then 0x401234, then no module", pcs, err)
	}
}

// Garbage never panics the parser or the rule interpreter.
func FuzzParse(f *testing.F) {
	f.Add([]byte{0x14, 0, 0, 0, 0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 0x10, 1, 0x1b, 0x0c, 7, 8, 0x90, 1, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		tab := &Table{}
		if tab.parse(b, 0x1000) != nil {
			return
		}
		for _, d := range tab.fdes {
			d.rules(d.lo + 4)
		}
	})
}
