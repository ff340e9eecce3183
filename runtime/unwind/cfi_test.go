package unwind

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	d, err := tab.find(f.Value)
	if err != nil || d == nil || d.lo != f.Value || d.hi != f.Value+f.Size {
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

// The search table of .eh_frame_hdr finds the same description as reading all of
// .eh_frame, for every function of libc.
func TestIndexMatchesFullRead(t *testing.T) {
	out, err := exec.Command("gcc", "-print-file-name=libc.so.6").Output()
	if err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	lazy, err := Parse(ef)
	if err != nil {
		t.Fatal(err)
	}
	if lazy.index == nil {
		t.Fatal("libc's .eh_frame_hdr search table was not used")
	}
	s := ef.Section(".eh_frame")
	data, _ := s.Data()
	full := &Table{}
	if err := full.parse(data, s.Addr); err != nil {
		t.Fatal(err)
	}
	if full.Len() != lazy.Len() || full.Len() < 1000 {
		t.Fatalf("%d descriptions read, %d in the search table", full.Len(), lazy.Len())
	}
	for _, want := range full.fdes {
		for _, pc := range []uint64{want.lo, want.hi - 1} {
			got, err := lazy.find(pc)
			if err != nil || got == nil || got.lo != want.lo || got.hi != want.hi || len(got.insns) != len(want.insns) {
				t.Fatalf("find(%#x) = %+v, %v; want [%#x,%#x)", pc, got, err, want.lo, want.hi)
			}
		}
	}
	if got, _ := lazy.find(full.fdes[0].lo - 1); got != nil && got.lo > full.fdes[0].lo-1 {
		t.Errorf("find before the first function = %+v", got)
	}
}

// Garbage in .eh_frame_hdr and .eh_frame never panics a lookup.
func FuzzIndex(f *testing.F) {
	f.Add([]byte{1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0}, []byte{0x14, 0, 0, 0, 0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 0x10, 1, 0x1b})
	f.Fuzz(func(t *testing.T, hdr, frame []byte) {
		tab := &Table{}
		if !tab.useIndex(hdr, 0x1000, frame, 0x1000) {
			return
		}
		for _, pc := range []uint64{0, 0x1000, 0x1008, 0xffffffff} {
			if d, err := tab.find(pc); err == nil && d != nil {
				d.rules(pc)
			}
		}
	})
}

// Every mapping of a file loaded normally gives the same load bias: the one at file
// offset 0 and the executable one, each from the segment that holds its offset.
func TestBiasOfEachMapping(t *testing.T) {
	cmd := exec.Command("sleep", "10") // dynamically linked, with libc and ld.so
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var maps []byte
	for i := 0; i < 100 && !strings.Contains(string(maps), "libc"); i++ {
		time.Sleep(10 * time.Millisecond)
		maps, _ = os.ReadFile(fmt.Sprintf("/proc/%d/maps", cmd.Process.Pid))
	}
	biases := map[string][]uint64{}
	tables := map[string]*Table{}
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "/") || f[4] == "0" {
			continue
		}
		tab := tables[f[5]]
		if tab == nil {
			ef, err := elf.Open(f[5])
			if err != nil {
				continue
			}
			tab, err = Parse(ef)
			ef.Close()
			if err != nil {
				t.Fatalf("%s: %v", f[5], err)
			}
			tables[f[5]] = tab
		}
		var start, end, off uint64
		fmt.Sscanf(f[0], "%x-%x", &start, &end)
		fmt.Sscanf(f[2], "%x", &off)
		b, ok := tab.Bias(start, off)
		if !ok {
			t.Fatalf("%s: no segment holds offset %#x", f[5], off)
		}
		biases[f[5]] = append(biases[f[5]], b)
	}
	if len(biases) < 3 {
		t.Fatalf("files mapped: %v", biases)
	}
	for file, bs := range biases {
		for _, b := range bs[1:] {
			if b != bs[0] {
				t.Errorf("%s: biases %#x differ", file, bs)
			}
		}
	}
}

// A table read from the file's bytes in memory finds the same descriptions, with the
// same rules, as one read from the file.
func TestParseImageMatchesParse(t *testing.T) {
	out, err := exec.Command("gcc", "-print-file-name=libc.so.6").Output()
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSpace(string(out))
	image, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ef, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	read, err := Parse(ef)
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := ParseImage(ef, image)
	if err != nil {
		t.Fatal(err)
	}
	if mapped.Len() != read.Len() || mapped.Len() < 1000 {
		t.Fatalf("%d descriptions from the image, %d read", mapped.Len(), read.Len())
	}
	for i := 0; i < read.Len(); i += 37 {
		pc := read.hdrAddr + uint64(int64(int32(le.Uint32(read.index[8*i:]))))
		a, errA := read.find(pc)
		b, errB := mapped.find(pc)
		if errA != nil || errB != nil || a == nil || b == nil || a.lo != b.lo || a.hi != b.hi || !bytes.Equal(a.insns, b.insns) {
			t.Fatalf("find(%#x): read %+v %v, image %+v %v", pc, a, errA, b, errB)
		}
	}
	// A section past the end of the image is an error, not a panic.
	if _, err := ParseImage(ef, image[:len(image)/2]); err == nil {
		t.Error("ParseImage of a truncated image succeeded")
	}
}
