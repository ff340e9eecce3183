package unwind

import (
	"bytes"
	"fmt"
)

// Signal frames of x86-64 Linux.
//
// The kernel delivers a signal by pushing an rt_sigframe on the stack the handler
// runs on (the thread's own, or its sigaltstack): the handler's return address (the
// sa_restorer trampoline), then a ucontext whose mcontext holds every register of the
// interrupted code, then the siginfo. The handler returns into the trampoline, which
// calls rt_sigreturn. Call-frame information describes that frame, when at all, with
// DWARF expressions (glibc's __restore_rt) that Walk does not evaluate; and the
// interrupted frames may be on another stack. So the trampoline is recognised by its
// instructions, not by a name or a table, and the interrupted registers are read
// from the ucontext, for the caller to walk on from there.

// The two encodings of the trampoline: mov $15 (rt_sigreturn) into eax or rax, then
// syscall.
var (
	movEAX15 = []byte{0xb8, 0x0f, 0x00, 0x00, 0x00}
	movRAX15 = []byte{0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00}
	syscall  = []byte{0x0f, 0x05}
)

// SigreturnBefore is how many bytes before an instruction IsSigreturn needs to see.
const SigreturnBefore = 7

// SigreturnAfter is how many bytes from an instruction IsSigreturn needs to see.
const SigreturnAfter = 9

// IsSigreturn reports whether the instruction at code[at:] is the first one of an
// rt_sigreturn trampoline or, when inside is true, also its syscall (a thread stopped
// there, its handler returned, the frame not yet given back). code holds what is
// around the instruction: up to SigreturnBefore bytes before, SigreturnAfter after.
func IsSigreturn(code []byte, at int, inside bool) bool {
	if at < 0 || at > len(code) {
		return false
	}
	rest := code[at:]
	for _, mov := range [][]byte{movEAX15, movRAX15} {
		if bytes.HasPrefix(rest, mov) && bytes.HasPrefix(rest[len(mov):], syscall) {
			return true
		}
		if inside && at >= len(mov) && bytes.Equal(code[at-len(mov):at], mov) && bytes.HasPrefix(rest, syscall) {
			return true
		}
	}
	return false
}

// Where the kernel's struct ucontext keeps the interrupted registers: after uc_flags,
// uc_link and uc_stack (ss_sp, ss_flags padded to 8, ss_size) comes uc_mcontext,
// whose general registers are in the order of struct sigcontext (and of glibc's
// gregset_t: REG_R8 = 0 ... REG_RIP = 16).
const (
	ucMcontext = 8 + 8 + 24
	// SigFrameSize is how far the registers reach into the ucontext.
	SigFrameSize = ucMcontext + 17*8
)

// sigcontextDwarf gives the DWARF number of each of the first 16 sigcontext words:
// r8-r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp. The 17th is rip.
var sigcontextDwarf = [16]int{8, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7}

// SignalRegs reads the registers a signal interrupted from the ucontext at uc: in a
// signal frame, the address just above the handler's return address (the stack
// pointer of the trampoline's frame). The instruction pointer is where the thread
// was interrupted (not a return address), so a walk from it looks up that very
// instruction.
func SignalRegs(uc uint64, mem Memory) (Regs, error) {
	var r Regs
	base := uc + ucMcontext
	for i, reg := range sigcontextDwarf {
		v, ok := mem(base + uint64(8*i))
		if !ok {
			return Regs{}, fmt.Errorf("signal frame at %#x: register word at %#x outside the stack", uc, base+uint64(8*i))
		}
		r.Val[reg], r.Set[reg] = v, true
	}
	pc, ok := mem(base + 16*8)
	if !ok {
		return Regs{}, fmt.Errorf("signal frame at %#x: instruction pointer at %#x outside the stack", uc, base+16*8)
	}
	r.PC = pc
	return r, nil
}

// ucCS is where the code segment selector of the interrupted code is, in the word
// after rip and eflags (cs, gs, fs, ss: 16 bits each, cs lowest).
const ucCS = ucMcontext + 18*8

// PlausibleSignalFrame reports whether the ucontext at uc holds what the kernel
// writes there: a user code segment selector (0x33 for 64-bit code, 0x23 for 32-bit)
// for the interrupted code. A word scan that finds a trampoline's address uses it to
// tell a signal frame from a stale copy of that address.
func PlausibleSignalFrame(uc uint64, mem Memory) bool {
	w, ok := mem(uc + ucCS)
	cs := w & 0xffff
	return ok && (cs == 0x33 || cs == 0x23)
}
