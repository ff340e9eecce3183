package unwind

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Both encodings of the trampoline are recognised at their first instruction, and at
// their syscall only where asked; other code is not.
func TestIsSigreturn(t *testing.T) {
	pad := []byte{0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90}
	cases := []struct {
		name         string
		code         []byte // SigreturnBefore bytes, then the instruction
		at           int
		start, scall bool // want, at the first instruction / inside
	}{
		{"mov rax", append(append([]byte{}, pad...), 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05), 7, true, true},
		{"mov eax", append(append([]byte{}, pad...), 0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x90, 0x90), 7, true, true},
		{"syscall after mov rax", []byte{0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x90}, 7, false, true},
		{"syscall after mov eax", []byte{0x90, 0x90, 0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x90}, 7, false, true},
		{"another syscall", append(append([]byte{}, pad...), 0xb8, 0x0e, 0, 0, 0, 0x0f, 0x05), 7, false, false},
		{"syscall after another mov", []byte{0x90, 0x90, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05}, 7, false, false},
		{"mov without syscall", append(append([]byte{}, pad...), 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0xc3, 0x90), 7, false, false},
		{"truncated", append(append([]byte{}, pad...), 0xb8, 0x0f, 0, 0, 0, 0x0f), 7, false, false},
		{"nothing before", []byte{0x0f, 0x05}, 0, false, false},
	}
	for _, c := range cases {
		if got := IsSigreturn(c.code, c.at, false); got != c.start {
			t.Errorf("%s: IsSigreturn(inside=false) = %v, want %v", c.name, got, c.start)
		}
		if got := IsSigreturn(c.code, c.at, true); got != c.scall {
			t.Errorf("%s: IsSigreturn(inside=true) = %v, want %v", c.name, got, c.scall)
		}
	}
}

// A real signal: the handler's return address is glibc's trampoline, recognised by
// its code; the ucontext the kernel wrote is just above it (glibc's offsets agree with
// the ones used here), and SignalRegs reads from it every register the program had set
// before the trap, its stack pointer and the trapping instruction.
func TestSignalRegsOfARealSignal(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sigframe")
	if out, err := exec.Command("gcc", "-O1", "-fno-omit-frame-pointer", filepath.Join("testdata", "sigframe.c"), "-o", bin).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", bin, err, out)
	}
	fields := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		fields[f[0]] = f[1:]
	}
	hex := func(s string) uint64 {
		v, err := strconv.ParseUint(s, 16, 64)
		if err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
		return v
	}
	if got, want := strings.Join(fields["offsets"], " "), fmt.Sprint(ucMcontext, ucMcontext+16*8, ucCS); got != want {
		t.Fatalf("glibc's offsets of r8, rip and cs in ucontext_t: %s, used here: %s", got, want)
	}
	named := map[string]uint64{} // the "slot" line is name value pairs
	pairs := append([]string{"slot"}, fields["slot"]...)
	for i := 0; i+1 < len(pairs); i += 2 {
		named[pairs[i]] = hex(pairs[i+1])
	}
	slot := named["slot"]
	if named["uc"] != slot+8 {
		t.Fatalf("ucontext at %#x, the handler's return address at %#x: want it just above", named["uc"], slot)
	}
	var code []byte
	for _, s := range fields["code"] {
		code = append(code, byte(hex(s)))
	}
	if !IsSigreturn(code, SigreturnBefore, false) {
		t.Fatalf("the handler's return address is not recognised as a trampoline: code % x", code)
	}
	words := map[uint64]uint64{}
	for i, s := range fields["frame"] {
		words[slot+uint64(8*i)] = hex(s)
	}
	mem := func(a uint64) (uint64, bool) { v, ok := words[a]; return v, ok }
	if !PlausibleSignalFrame(slot+8, mem) {
		t.Errorf("the kernel's frame is not plausible: cs word %#x", words[slot+8+ucCS])
	}
	r, err := SignalRegs(slot+8, mem)
	if err != nil {
		t.Fatal(err)
	}
	if r.PC != named["trap"] || r.PC != named["rip"] {
		t.Errorf("interrupted pc %#x, want trap_here %#x", r.PC, named["trap"])
	}
	for reg := 0; reg < 16; reg++ {
		want := uint64(0x1000 + reg)
		if reg == 7 {
			want = named["rsp"]
		}
		if !r.Set[reg] || r.Val[reg] != want {
			t.Errorf("DWARF register %d = %#x (set %v), want %#x", reg, r.Val[reg], r.Set[reg], want)
		}
	}
	// Words missing from the frame: an error, not zeros.
	delete(words, slot+8+ucMcontext+16*8)
	if _, err := SignalRegs(slot+8, mem); err == nil {
		t.Error("SignalRegs with the rip word unreadable: no error")
	}
	if PlausibleSignalFrame(slot+16, mem) {
		t.Error("a frame one word off is plausible")
	}
}
