package upatch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLeaveCodeMatchesSource assembles testdata/leave_amd64.s and compares it with
// the bytes the engine writes, and with the offsets it relies on.
func TestLeaveCodeMatchesSource(t *testing.T) {
	dir := t.TempDir()
	obj, bin := filepath.Join(dir, "leave.o"), filepath.Join(dir, "leave.bin")
	if out, err := exec.Command("as", testdata("leave_amd64.s"), "-o", obj).CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, out)
	}
	if out, err := exec.Command("objcopy", "-O", "binary", "-j", ".text", obj, bin).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, leaveCode) {
		t.Fatalf("leaveCode differs from testdata/leave_amd64.s assembled:\n% x\n% x", leaveCode, b)
	}
	out, err := exec.Command("nm", obj).Output()
	if err != nil {
		t.Fatal(err)
	}
	syms := map[string]uint64{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 {
			v, _ := strconv.ParseUint(f[0], 16, 64)
			syms[f[2]] = v
		}
	}
	if syms["notified"] != leaveNotified || syms["sig"] != leaveSig {
		t.Fatalf("offsets: notified %#x (want %#x), sig %#x (want %#x)", syms["notified"], leaveNotified, syms["sig"], leaveSig)
	}
}

// pageMem is the leave page and a stack, for the interpreter below.
type pageMem struct {
	base, stackLo uint64
	page, stack   []byte
}

func (m *pageMem) ReadMem(addr uint64, b []byte) error {
	switch {
	case addr >= m.base && addr+uint64(len(b)) <= m.base+uint64(len(m.page)):
		copy(b, m.page[addr-m.base:])
	case addr >= m.stackLo && addr+uint64(len(b)) <= m.stackLo+uint64(len(m.stack)):
		copy(b, m.stack[addr-m.stackLo:])
	default:
		return fmt.Errorf("read %#x outside the test memory", addr)
	}
	return nil
}

func (m *pageMem) word(addr uint64) uint64 {
	var b [8]byte
	if err := m.ReadMem(addr, b[:]); err != nil {
		panic(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (m *pageMem) push(r *unix.PtraceRegs, v uint64) {
	r.Rsp -= 8
	binary.LittleEndian.PutUint64(m.stack[r.Rsp-m.stackLo:], v)
}

func (m *pageMem) pop(r *unix.PtraceRegs) uint64 {
	v := m.word(r.Rsp)
	r.Rsp += 8
	return v
}

// step executes the instruction at r.Rip, decoding the bytes of the page: exactly
// the instructions the return code and its entries use. It reports whether the
// instruction was the final ret.
func (m *pageMem) step(t *testing.T, r *unix.PtraceRegs) bool {
	b := m.page[r.Rip-m.base:]
	regs := map[byte]*uint64{0: &r.Rax, 1: &r.Rcx, 6: &r.Rsi, 7: &r.Rdi}
	switch {
	case b[0] == 0xff && b[1] == 0x35: // push [rip+d]
		d := int32(binary.LittleEndian.Uint32(b[2:]))
		m.push(r, m.word(uint64(int64(r.Rip)+6+int64(d))))
		r.Rip += 6
	case b[0] == 0xe9: // jmp rel32
		r.Rip = uint64(int64(r.Rip) + 5 + int64(int32(binary.LittleEndian.Uint32(b[1:]))))
	case b[0] >= 0x50 && b[0] <= 0x57: // push reg
		m.push(r, *regs[b[0]-0x50])
		r.Rip++
	case b[0] >= 0x58 && b[0] <= 0x5f: // pop reg
		*regs[b[0]-0x58] = m.pop(r)
		r.Rip++
	case b[0] == 0x41 && b[1] == 0x53: // push r11
		m.push(r, r.R11)
		r.Rip += 2
	case b[0] == 0x41 && b[1] == 0x5b: // pop r11
		r.R11 = m.pop(r)
		r.Rip += 2
	case b[0] == 0xb8: // mov $imm32, %eax
		r.Rax = uint64(binary.LittleEndian.Uint32(b[1:]))
		r.Rip += 5
	case b[0] == 0x0f && b[1] == 0x05: // syscall: result in rax, rcx and r11 clobbered
		r.Rip += 2
		r.Rax, r.Rcx, r.R11 = 4242, r.Rip, r.Eflags
	case b[0] == 0x89 && b[1] == 0xc7: // mov %eax, %edi
		r.Rdi = r.Rax & 0xffffffff
		r.Rip += 2
	case b[0] == 0x8b && b[1] == 0x35: // mov [rip+d], %esi
		d := int32(binary.LittleEndian.Uint32(b[2:]))
		r.Rsi = m.word(uint64(int64(r.Rip)+6+int64(d))) & 0xffffffff
		r.Rip += 6
	case b[0] == 0xc3:
		r.Rip = m.pop(r)
		return true
	default:
		t.Fatalf("unexpected instruction % x at %#x", b[:4], r.Rip)
	}
	return false
}

// At every instruction of an entry and of the return code, the state the engine
// computes for a thread stopped there is the state the thread reaches by itself
// after the final ret: the same registers, at the real return address, with the
// stack pointer where the busy frame's return left it.
func TestLeaveStateAtEveryInstruction(t *testing.T) {
	const base, stackLo = 0x7f0000000000, 0x7ffd00000000
	l := &leaver{base: base}
	m := &pageMem{base: base, stackLo: stackLo, page: make([]byte, leavePage), stack: make([]byte, 4096)}
	copy(m.page, leaveCode)
	binary.LittleEndian.PutUint32(m.page[leaveSig:], uint32(unix.SIGURG))
	const ret = 0x401234
	for i := 0; i < 3; i++ {
		l.putEntry(m.page[leaveEntries+i*leaveEntry:], i, ret+uint64(i))
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 3; i++ {
		var start unix.PtraceRegs
		for _, p := range []*uint64{&start.Rax, &start.Rbx, &start.Rcx, &start.Rdx, &start.Rsi, &start.Rdi, &start.Rbp,
			&start.R8, &start.R9, &start.R10, &start.R11, &start.R12, &start.R13, &start.R14, &start.R15, &start.Eflags} {
			*p = rng.Uint64()
		}
		start.Rip, start.Rsp, start.Orig_rax = l.entry(i), stackLo+2048, ^uint64(0)
		// The thread's own run to the end.
		want := start
		for !m.step(t, &want) {
		}
		if want.Rip != ret+uint64(i) || want.Rsp != start.Rsp {
			t.Fatalf("entry %d returns to %#x with rsp %#x, want %#x and %#x", i, want.Rip, want.Rsp, ret+uint64(i), start.Rsp)
		}
		if want != start2(start, ret+uint64(i)) {
			t.Fatalf("entry %d: registers after the return code differ from before it", i)
		}
		// Stopped at each instruction on the way.
		r := start
		for n := 0; ; n++ {
			got, err := l.returned(r, m)
			if err != nil {
				t.Fatalf("entry %d, instruction %d at %#x: %v", i, n, r.Rip, err)
			}
			if got != want {
				t.Fatalf("entry %d, instruction %d at offset %#x: state\n%+v\nwant\n%+v", i, n, r.Rip-base, got, want)
			}
			if m.step(t, &r) {
				break
			}
		}
	}
}

// start2 is start as it is after returning to ret.
func start2(start unix.PtraceRegs, ret uint64) unix.PtraceRegs {
	start.Rip = ret
	return start
}
