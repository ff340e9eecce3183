package upatch

import (
	"encoding/binary"
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/unwind"
)

// The stacks of one thread's check, and the signal frames that lead from one to
// another.
//
// A thread running a signal handler has two sets of frames: the handler's, which end
// at the rt_sigreturn trampoline, and those the signal interrupted, whose registers
// the kernel saved in the signal frame above the trampoline's address. With
// sigaltstack the handler runs on another stack than the interrupted frames, so
// the check reads, besides the thread's current stack, the stack each signal frame
// says was interrupted: from the interrupted stack pointer to the end of its mapping.

// maxSignalFrames bounds the signal frames one thread's check follows (nested
// signals); a thread with more cannot be checked.
const maxSignalFrames = 32

// stackSeg is the bytes of one stack read for the check, from lo to the end of the
// mapping that holds lo.
type stackSeg struct {
	lo uint64
	b  []byte
}

func (s *stackSeg) end() uint64 { return s.lo + uint64(len(s.b)) }

// word reads the 8-byte word at addr; ok is false outside the segment.
func (s *stackSeg) word(addr uint64) (uint64, bool) {
	if addr < s.lo || addr%8 != 0 || addr-s.lo+8 > uint64(len(s.b)) {
		return 0, false
	}
	return binary.LittleEndian.Uint64(s.b[addr-s.lo:]), true
}

// threadStacks are the stacks one thread's check reads: its current one first.
type threadStacks struct {
	segs []*stackSeg
	// read reads the stack that holds sp, from sp to the end of its mapping; nil
	// when no other stack can be read.
	read func(sp uint64) (*stackSeg, error)
}

// at gives a segment that holds sp, reading it if none does yet.
func (t *threadStacks) at(sp uint64) (*stackSeg, error) {
	for _, s := range t.segs {
		if sp >= s.lo && sp < s.end() {
			return s, nil
		}
	}
	if t.read == nil {
		return nil, fmt.Errorf("stack pointer %#x outside the stacks read", sp)
	}
	s, err := t.read(sp)
	if err != nil {
		return nil, err
	}
	t.segs = append(t.segs, s)
	return s, nil
}

// sigreturns recognises rt_sigreturn trampolines by their instructions in the
// process (unwind.IsSigreturn), each address read once per check.
type sigreturns struct {
	code memReader
	// mods are where the word scan looks for trampolines: a word of a stack is only
	// read as code when it points into one of them (the files with call-frame
	// information, the C library among them), so that a scan does not read the
	// process for every word. A walk looks at every return address.
	mods  []unwind.Module
	known map[uint64]sigreturnAt
}

type sigreturnAt struct{ start, syscall bool }

// at reports whether pc is a trampoline's first instruction or, when inside is
// true (pc is where a thread was stopped or interrupted, not a return address), also
// its syscall.
func (s *sigreturns) at(pc uint64, inside bool) bool {
	k, ok := s.known[pc]
	if !ok {
		k = s.look(pc)
		if s.known == nil {
			s.known = make(map[uint64]sigreturnAt)
		}
		s.known[pc] = k
	}
	return k.start || inside && k.syscall
}

const sigreturnBefore, sigreturnAfter = unwind.SigreturnBefore, unwind.SigreturnAfter

func (s *sigreturns) look(pc uint64) sigreturnAt {
	var b [sigreturnBefore + sigreturnAfter]byte
	if pc >= sigreturnBefore && s.code.ReadMem(pc-sigreturnBefore, b[:]) == nil {
		return recognise(b[:])
	}
	// pc near the start of a mapping: nothing to see before it.
	if s.code.ReadMem(pc, b[:sigreturnAfter]) == nil {
		return sigreturnAt{start: unwind.IsSigreturn(b[:sigreturnAfter], 0, false)}
	}
	return sigreturnAt{}
}

// recognise tells what the code around an address (sigreturnBefore bytes before it)
// is.
func recognise(b []byte) sigreturnAt {
	return sigreturnAt{unwind.IsSigreturn(b, sigreturnBefore, false), unwind.IsSigreturn(b, sigreturnBefore, true)}
}

// prefetch reads the code around every pc in one system call, where the process
// can (each pc is otherwise read when first asked about): the walks of a check
// ask about every return address, while every thread is stopped.
func (s *sigreturns) prefetch(pcs []uint64) {
	v, ok := s.code.(interface {
		ReadMemv(addrs []uint64, bufs [][]byte) error
	})
	if !ok || len(pcs) == 0 {
		return
	}
	addrs, bufs := make([]uint64, 0, len(pcs)), make([][]byte, 0, len(pcs))
	for _, pc := range pcs {
		if pc >= sigreturnBefore {
			addrs = append(addrs, pc-sigreturnBefore)
			bufs = append(bufs, make([]byte, sigreturnBefore+sigreturnAfter))
		}
	}
	if v.ReadMemv(addrs, bufs) != nil {
		return // one range unreadable: each is read on its own when asked about
	}
	if s.known == nil {
		s.known = make(map[uint64]sigreturnAt, len(addrs))
	}
	for i, a := range addrs {
		s.known[a+sigreturnBefore] = recognise(bufs[i])
	}
}

// framePCs lists the instruction pointers and return addresses that a plain walk of
// each thread's current stack finds, for prefetch. A fault on a mapped table ends
// the list early (the check itself then takes care of it).
func framePCs(regs []unix.PtraceRegs, addrs []uint64, stacks [][]byte, mods []unwind.Module) (pcs []uint64) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { _ = recover() }()
	seen := make(map[uint64]bool)
	for i := range regs {
		seg := &stackSeg{lo: addrs[i], b: stacks[i]}
		_ = unwind.Walk(unwind.NewRegs(regs[i].Rip, dwarfRegs(regs[i])), mods, seg.word, maxFrames, func(f unwind.Frame) bool {
			if !seen[f.PC] {
				seen[f.PC] = true
				pcs = append(pcs, f.PC)
			}
			return true
		})
	}
	return pcs
}

// candidate reports whether the word scan should read w as code.
func (s *sigreturns) candidate(w uint64) bool { return inModule(s.mods, w) }
