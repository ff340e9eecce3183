package unwind

import (
	"fmt"
)

// DWARF register numbers of x86-64.
const (
	regRBP  = 6
	regRSP  = 7
	regRA   = 16
	numRegs = 17
)

// Regs are the registers of a frame that unwinding needs: the callee-saved ones may
// hold the frame's canonical frame address; the others are unknown above frame 0.
type Regs struct {
	PC  uint64
	Val [numRegs]uint64
	Set [numRegs]bool
	// PCAt is where PC was read from on the stack (0 for frame 0, or when the
	// return address came from a register).
	PCAt uint64
	// Return says that PC is a return address even in the first frame of a Walk
	// (which then looks up the call before it): a walk resumed at a caller.
	Return bool
}

// NewRegs are the registers of a stopped thread (DWARF order: rax rdx rcx rbx rsi rdi
// rbp rsp r8-r15), with its instruction pointer.
func NewRegs(pc uint64, dwarfRegs [16]uint64) Regs {
	r := Regs{PC: pc}
	for i, v := range dwarfRegs {
		r.Val[i], r.Set[i] = v, true
	}
	return r
}

// Module is one loaded ELF file: its table and where its code is in the process.
type Module struct {
	Lo, Hi uint64 // the executable mapping(s), run-time addresses
	Bias   uint64 // run-time address minus link-time address
	Table  *Table
}

// Memory reads one 8-byte word of the thread's stack; ok is false outside it.
type Memory func(addr uint64) (uint64, bool)

type ruleKind uint8

const (
	ruleSame ruleKind = iota // unspecified or same value
	ruleUndefined
	ruleOffset    // saved at CFA+n
	ruleValOffset // value is CFA+n
	ruleRegister  // in register n
	ruleExpr      // a DWARF expression: not evaluated
)

type rule struct {
	kind ruleKind
	n    int64
}

type state struct {
	cfaReg  uint64
	cfaOff  int64
	cfaExpr bool
	regs    [numRegs]rule
}

// Frame is one frame found by Walk.
type Frame struct {
	PC uint64 // the instruction pointer (frame 0) or the return address
	SP uint64 // the stack pointer in the frame
	// PCAt is the stack slot the return address PC was read from (0 for frame 0):
	// writing another address there changes where the callee returns.
	PCAt uint64
}

// Walk unwinds from r, calling visit for each frame (frame 0 first) until the
// outermost frame or until visit returns false. It returns an error wrapping
// ErrNoInfo for a frame it cannot unwind; the frames visited before were real.
func Walk(r Regs, mods []Module, mem Memory, maxFrames int, visit func(Frame) bool) error {
	signal := false
	for depth := 0; depth < maxFrames; depth++ {
		if !visit(Frame{PC: r.PC, SP: r.Val[regRSP], PCAt: r.PCAt}) {
			return nil
		}
		// A return address follows its call: look up the call itself, which may be
		// the last instruction of its function. Frame 0 and a frame interrupted by a
		// signal are at the instruction itself.
		look := r.PC
		if (depth > 0 || r.Return) && !signal {
			look--
		}
		m := moduleOf(mods, look)
		if m == nil {
			return fmt.Errorf("frame %d at %#x: %w: not in a module with call-frame information", depth, r.PC, ErrNoInfo)
		}
		f, err := m.Table.find(look - m.Bias)
		if err != nil {
			return fmt.Errorf("frame %d at %#x: %w: %v", depth, r.PC, ErrNoInfo, err)
		}
		if f == nil {
			return fmt.Errorf("frame %d at %#x: %w: no description of its function", depth, r.PC, ErrNoInfo)
		}
		st, err := f.rules(look - m.Bias)
		if err != nil {
			return fmt.Errorf("frame %d at %#x: %w: %v", depth, r.PC, ErrNoInfo, err)
		}
		next, outer, err := step(r, st, f.cie.raReg, mem)
		if err != nil {
			return fmt.Errorf("frame %d at %#x: %w: %v", depth, r.PC, ErrNoInfo, err)
		}
		if outer || next.PC == 0 {
			return nil
		}
		if next.Val[regRSP] <= r.Val[regRSP] && (depth > 0 || r.Return) {
			return fmt.Errorf("frame %d at %#x: %w: the stack pointer does not grow (%#x after %#x)", depth, r.PC, ErrNoInfo, next.Val[regRSP], r.Val[regRSP])
		}
		signal = f.cie.signal
		r = next
	}
	return fmt.Errorf("%w: more than %d frames", ErrNoInfo, maxFrames)
}

func moduleOf(mods []Module, pc uint64) *Module {
	for i := range mods {
		if pc >= mods[i].Lo && pc < mods[i].Hi && mods[i].Table != nil {
			return &mods[i]
		}
	}
	return nil
}

// step computes the caller's registers. outer is true at the outermost frame (the
// return address is undefined there).
func step(r Regs, st state, raReg uint64, mem Memory) (Regs, bool, error) {
	if st.cfaExpr {
		return Regs{}, false, fmt.Errorf("its frame address is a DWARF expression")
	}
	if st.cfaReg >= numRegs || !r.Set[st.cfaReg] {
		return Regs{}, false, fmt.Errorf("frame address in register %d, whose value is unknown", st.cfaReg)
	}
	cfa := uint64(int64(r.Val[st.cfaReg]) + st.cfaOff)
	var next Regs
	for reg := uint64(0); reg < numRegs; reg++ {
		ru := st.regs[reg]
		switch ru.kind {
		case ruleSame:
			if reg == regRBP || reg == 3 || reg >= 12 && reg <= 15 { // callee-saved: rbp rbx r12-r15
				next.Val[reg], next.Set[reg] = r.Val[reg], r.Set[reg]
			}
		case ruleOffset:
			v, ok := mem(uint64(int64(cfa) + ru.n))
			if !ok {
				return Regs{}, false, fmt.Errorf("register %d saved at %#x, outside the stack", reg, int64(cfa)+ru.n)
			}
			next.Val[reg], next.Set[reg] = v, true
		case ruleValOffset:
			next.Val[reg], next.Set[reg] = uint64(int64(cfa)+ru.n), true
		case ruleRegister:
			if ru.n >= 0 && ru.n < numRegs {
				next.Val[reg], next.Set[reg] = r.Val[ru.n], r.Set[ru.n]
			}
		case ruleUndefined, ruleExpr:
			// unknown in the caller
		}
	}
	if raReg >= numRegs {
		return Regs{}, false, fmt.Errorf("return address column %d", raReg)
	}
	switch st.regs[raReg].kind {
	case ruleUndefined:
		return Regs{}, true, nil
	case ruleExpr:
		return Regs{}, false, fmt.Errorf("its return address is a DWARF expression")
	}
	if !next.Set[raReg] {
		return Regs{}, false, fmt.Errorf("its return address is not saved")
	}
	next.PC = next.Val[raReg]
	if ru := st.regs[raReg]; ru.kind == ruleOffset {
		next.PCAt = uint64(int64(cfa) + ru.n)
	}
	next.Val[regRSP], next.Set[regRSP] = cfa, true
	return next, false, nil
}

// rules runs the CIE's initial instructions and the FDE's up to pc.
func (f *fde) rules(pc uint64) (state, error) {
	var st state
	c := f.cie
	if err := run(c, c.initial, ^uint64(0), f.lo, &st, nil); err != nil {
		return st, err
	}
	initial := st
	if err := run(c, f.insns, pc, f.lo, &st, &initial); err != nil {
		return st, err
	}
	return st, nil
}

// run interprets call-frame instructions until the location passes pc.
func run(c *cie, insns []byte, pc, loc uint64, st *state, initial *state) error {
	r := &reader{b: insns}
	var stack []state
	for r.off < len(insns) {
		op := r.u8()
		switch op >> 6 {
		case 1: // advance_loc
			loc += uint64(op&0x3f) * c.codeAlign
			if loc > pc {
				return r.err
			}
			continue
		case 2: // offset
			reg := uint64(op & 0x3f)
			setRule(st, reg, rule{ruleOffset, int64(r.uleb()) * c.dataAlign})
			continue
		case 3: // restore
			restore(st, initial, uint64(op&0x3f))
			continue
		}
		switch op {
		case 0x00: // nop
		case 0x01: // set_loc: compilers do not emit it in .eh_frame; its base is not
			// known here, so a table that uses it is not trusted.
			return fmt.Errorf("call-frame instruction set_loc")
		case 0x02, 0x03, 0x04: // advance_loc1/2/4
			var d uint64
			switch op {
			case 0x02:
				d = uint64(r.u8())
			case 0x03:
				d = r.u16()
			default:
				d = r.u32()
			}
			loc += d * c.codeAlign
			if loc > pc {
				return r.err
			}
		case 0x05: // offset_extended
			reg := r.uleb()
			setRule(st, reg, rule{ruleOffset, int64(r.uleb()) * c.dataAlign})
		case 0x06: // restore_extended
			restore(st, initial, r.uleb())
		case 0x07: // undefined
			setRule(st, r.uleb(), rule{kind: ruleUndefined})
		case 0x08: // same_value
			setRule(st, r.uleb(), rule{kind: ruleSame})
		case 0x09: // register
			reg := r.uleb()
			setRule(st, reg, rule{ruleRegister, int64(r.uleb())})
		case 0x0a: // remember_state
			stack = append(stack, *st)
		case 0x0b: // restore_state
			if len(stack) == 0 {
				return fmt.Errorf("restore_state without remember_state")
			}
			*st = stack[len(stack)-1] // the whole row, frame address rule included
			stack = stack[:len(stack)-1]
		case 0x0c: // def_cfa
			st.cfaReg = r.uleb()
			st.cfaOff = int64(r.uleb())
			st.cfaExpr = false
		case 0x0d: // def_cfa_register
			st.cfaReg = r.uleb()
			st.cfaExpr = false
		case 0x0e: // def_cfa_offset
			st.cfaOff = int64(r.uleb())
		case 0x0f: // def_cfa_expression
			n := r.uleb()
			r.off += int(min(n, uint64(len(insns))))
			st.cfaExpr = true
		case 0x10: // expression
			reg := r.uleb()
			n := r.uleb()
			r.off += int(min(n, uint64(len(insns))))
			setRule(st, reg, rule{kind: ruleExpr})
		case 0x11: // offset_extended_sf
			reg := r.uleb()
			setRule(st, reg, rule{ruleOffset, r.sleb() * c.dataAlign})
		case 0x12: // def_cfa_sf
			st.cfaReg = r.uleb()
			st.cfaOff = r.sleb() * c.dataAlign
			st.cfaExpr = false
		case 0x13: // def_cfa_offset_sf
			st.cfaOff = r.sleb() * c.dataAlign
		case 0x14: // val_offset
			reg := r.uleb()
			setRule(st, reg, rule{ruleValOffset, int64(r.uleb()) * c.dataAlign})
		case 0x15: // val_offset_sf
			reg := r.uleb()
			setRule(st, reg, rule{ruleValOffset, r.sleb() * c.dataAlign})
		case 0x16: // val_expression
			reg := r.uleb()
			n := r.uleb()
			r.off += int(min(n, uint64(len(insns))))
			setRule(st, reg, rule{kind: ruleExpr})
		case 0x2e: // GNU_args_size
			r.uleb()
		case 0x2f: // GNU_negative_offset_extended
			reg := r.uleb()
			setRule(st, reg, rule{ruleOffset, -int64(r.uleb()) * c.dataAlign})
		default:
			return fmt.Errorf("call-frame instruction %#x", op)
		}
		if r.err != nil {
			return r.err
		}
	}
	if r.off > len(insns) {
		return fmt.Errorf("call-frame instructions truncated")
	}
	return r.err
}

func setRule(st *state, reg uint64, ru rule) {
	if reg < numRegs {
		st.regs[reg] = ru
	}
}

func restore(st, initial *state, reg uint64) {
	if reg >= numRegs {
		return
	}
	if initial == nil {
		st.regs[reg] = rule{}
		return
	}
	st.regs[reg] = initial.regs[reg]
}
