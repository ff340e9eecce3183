package upatch

import (
	"fmt"

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
	b := s.b[addr-s.lo:]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56, true
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

func (s *sigreturns) look(pc uint64) sigreturnAt {
	const before, after = unwind.SigreturnBefore, unwind.SigreturnAfter
	var b [before + after]byte
	if pc >= before && s.code.ReadMem(pc-before, b[:]) == nil {
		return sigreturnAt{unwind.IsSigreturn(b[:], before, false), unwind.IsSigreturn(b[:], before, true)}
	}
	// pc near the start of a mapping: nothing to see before it.
	if s.code.ReadMem(pc, b[:after]) == nil {
		return sigreturnAt{start: unwind.IsSigreturn(b[:after], 0, false)}
	}
	return sigreturnAt{}
}

// candidate reports whether the word scan should read w as code.
func (s *sigreturns) candidate(w uint64) bool { return inModule(s.mods, w) }
