package layout

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/symbols"
)

// resolved is the memo of one symbol during a Link.
type resolved struct {
	done   bool
	addr   uint64
	isFunc bool
	local  bool // defined in the patch: always in reach
	tpoff  int64
	tpDone bool
	err    error
}

type linker struct {
	p    *Plan
	o    *patchobj.Object
	base uint64
	r    Resolver
	img  *Image
	syms []resolved
	// slotSet marks GOT slots already written.
	slotSet []bool
	// trampSet marks trampolines already written.
	trampSet []bool
}

// Link lays the object out at base (page aligned) and applies every relocation,
// resolving undefined symbols through r. It is pure: the result is bytes to
// write, nothing is written.
func (p *Plan) Link(base uint64, r Resolver) (*Image, error) {
	if base%pageSize != 0 {
		return nil, fmt.Errorf("link patch at %#x: base is not page aligned", base)
	}
	if base+p.TextSize+p.DataSize < base {
		return nil, fmt.Errorf("link patch at %#x: image wraps around the address space", base)
	}
	if r == nil {
		return nil, errors.New("link patch: no resolver")
	}
	o := p.obj
	img := &Image{
		Base:        base,
		Text:        make([]byte, p.TextSize),
		Data:        make([]byte, p.DataSize),
		GOT:         base + p.gotOff,
		Trampolines: base + p.trampOff,
	}
	l := &linker{p: p, o: o, base: base, r: r, img: img,
		syms: make([]resolved, len(o.Symbols)), slotSet: make([]bool, len(p.gotSlots)), trampSet: make([]bool, len(p.tramps))}
	// Unused trampoline space traps if ever jumped to.
	for i := p.trampOff; i < p.trampOff+uint64(len(p.tramps))*TrampolineSize; i++ {
		img.Text[i] = 0xcc
	}
	for i, s := range o.Sections {
		if s == nil || p.secRegion[i] == regionNone {
			continue
		}
		img.Sections = append(img.Sections, PlacedSection{Index: i, Name: s.Name, Addr: l.secAddr(i), Size: s.Size})
		if s.Type != elf.SHT_NOBITS {
			copy(l.regionBytes(i)[p.secOff[i]:], s.Data)
			if end := int(p.secOff[i] + s.Size); p.secRegion[i] == regionData && end > img.DataInit {
				img.DataInit = end
			}
		}
	}
	for i, s := range o.Sections {
		if s == nil || p.secRegion[i] == regionNone {
			continue
		}
		buf := l.regionBytes(i)[p.secOff[i] : p.secOff[i]+s.Size]
		for _, rel := range s.Relocs {
			if err := l.apply(i, s, buf, rel); err != nil {
				return nil, err
			}
		}
	}
	for _, f := range o.Funcs {
		fa, err := l.funcAddr(f)
		if err != nil {
			return nil, err
		}
		img.Funcs = append(img.Funcs, fa)
	}
	return img, nil
}

func (l *linker) regionBytes(sec int) []byte {
	if l.p.secRegion[sec] == regionData {
		return l.img.Data
	}
	return l.img.Text
}

func (l *linker) secAddr(sec int) uint64 {
	if l.p.secRegion[sec] == regionData {
		return l.base + l.p.TextSize + l.p.secOff[sec]
	}
	return l.base + l.p.secOff[sec]
}

// symbol resolves symbol i: sections of the patch, COMMON, absolute values,
// a same-named definition of the patch, then the Resolver.
func (l *linker) symbol(i uint32) (resolved, error) {
	m := &l.syms[i]
	if m.done {
		return *m, m.err
	}
	m.done = true
	sym := l.o.Symbols[i]
	switch {
	case sym.Section == elf.SHN_ABS:
		m.addr = sym.Value
	case sym.Section == elf.SHN_COMMON:
		m.addr, m.local = l.base+l.p.TextSize+l.p.commonOff[i], true
	case sym.Defined():
		if sym.Section >= elf.SHN_LORESERVE || int(sym.Section) >= len(l.o.Sections) {
			m.err = fmt.Errorf("symbol %q: section index %#x not supported", sym.Name, uint16(sym.Section))
			break
		}
		sec := int(sym.Section)
		if l.p.secRegion[sec] == regionNone {
			m.err = fmt.Errorf("symbol %q: defined in section %q, which is not loaded", sym.Name, l.o.Sections[sec].Name)
			break
		}
		m.addr, m.local = l.secAddr(sec)+sym.Value, true
		m.isFunc = sym.Type == elf.STT_FUNC
	default:
		if j, ok := l.p.globals[sym.Name]; ok && j != i && sym.Name != "" {
			// The patch's own definition wins over the target's.
			d, err := l.symbol(j)
			*m = d
			m.err = err
			break
		}
		if sym.Type == elf.STT_TLS {
			m.err = fmt.Errorf("symbol %q: thread-local, only TPOFF32/GOTTPOFF may reference it", sym.Name)
			break
		}
		t := l.o.Target(sym.Name)
		addr, isFunc, err := l.r.Resolve(t.Name, t.Pos)
		if err != nil {
			if sym.Bind == elf.STB_WEAK && (errors.Is(err, ErrNotFound) || errors.Is(err, symbols.ErrNotFound)) {
				addr, isFunc, err = 0, false, nil
			} else {
				m.err = fmt.Errorf("resolve %q: %w", sym.Name, err)
				break
			}
		}
		m.addr, m.isFunc = addr, isFunc
	}
	return *m, m.err
}

// tpoff resolves the TLS offset of symbol i.
func (l *linker) tpoff(i uint32) (int64, error) {
	m := &l.syms[i]
	if m.tpDone {
		return m.tpoff, nil
	}
	sym := l.o.Symbols[i]
	if sym.Defined() {
		return 0, fmt.Errorf("symbol %q: a TLS relocation needs an undefined thread-local variable of the executable", sym.Name)
	}
	t := l.o.Target(sym.Name)
	off, err := l.r.TLSOffset(t.Name, t.Pos)
	if err != nil {
		return 0, fmt.Errorf("resolve TLS %q: %w", sym.Name, err)
	}
	m.tpoff, m.tpDone = off, true
	return off, nil
}

// tlsModule resolves the TLS module and block offset of symbol i, an undefined
// thread-local variable of the target.
func (l *linker) tlsModule(i uint32) (module, offset uint64, err error) {
	sym := l.o.Symbols[i]
	if sym.Defined() {
		return 0, 0, fmt.Errorf("symbol %q: a TLS relocation needs an undefined thread-local variable of the target", sym.Name)
	}
	t := l.o.Target(sym.Name)
	module, offset, err = l.r.TLSModule(t.Name, t.Pos)
	if err != nil {
		return 0, 0, fmt.Errorf("resolve TLS %q: %w", sym.Name, err)
	}
	return module, offset, nil
}

func fitsInt32(v int64) bool { return v >= math.MinInt32 && v <= math.MaxInt32 }

// apply applies relocation rel to buf, the bytes of section sec (index si).
func (l *linker) apply(si int, sec *patchobj.Section, buf []byte, rel patchobj.Reloc) error {
	if int(rel.Sym) >= len(l.o.Symbols) {
		return fmt.Errorf("relocate %s+%#x: symbol index %d out of range", sec.Name, rel.Offset, rel.Sym)
	}
	symName := l.o.Symbols[rel.Sym].Name
	if symName == "" && l.o.Symbols[rel.Sym].Type == elf.STT_SECTION {
		if s := int(l.o.Symbols[rel.Sym].Section); s < len(l.o.Sections) {
			symName = l.o.Sections[s].Name
		}
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("relocate %s+%#x (%v against %q): %w", sec.Name, rel.Offset, rel.Type, symName, fmt.Errorf(format, args...))
	}
	size := patchobj.RelocSize(rel.Type)
	if rel.Offset > uint64(len(buf)) || size > uint64(len(buf))-rel.Offset {
		return fail("outside the %d-byte section", len(buf))
	}
	field := buf[rel.Offset : rel.Offset+size]
	P := l.secAddr(si) + rel.Offset
	A := rel.Addend
	put32 := func(v int64, signed bool) error {
		if signed && !fitsInt32(v) || !signed && (v < 0 || v > math.MaxUint32) {
			return fail("value %#x does not fit the 32-bit field", v)
		}
		binary.LittleEndian.PutUint32(field, uint32(v))
		return nil
	}

	switch rel.Type {
	case elf.R_X86_64_NONE:
		return nil
	case elf.R_X86_64_TPOFF32:
		off, err := l.tpoff(rel.Sym)
		if err != nil {
			return fail("%w", err)
		}
		return put32(off+A, true)
	case elf.R_X86_64_GOTTPOFF:
		off, err := l.tpoff(rel.Sym)
		if err != nil {
			return fail("%w", err)
		}
		slot, err := l.slot(slotKey{slotTPOff, rel.Sym}, uint64(off))
		if err != nil {
			return fail("%w", err)
		}
		return put32(int64(slot+uint64(A)-P), true)
	case elf.R_X86_64_TLSGD, elf.R_X86_64_TLSLD:
		mod, off, err := l.tlsModule(rel.Sym)
		if err != nil {
			return fail("%w", err)
		}
		first, second := slotKey{slotGDModule, rel.Sym}, slotKey{slotGDOffset, rel.Sym}
		if rel.Type == elf.R_X86_64_TLSLD {
			first, second, off = slotKey{slotLDModule, 0}, slotKey{slotLDZero, 0}, 0
		}
		pair, err := l.slot(first, mod)
		if err != nil {
			return fail("%w", err)
		}
		if _, err := l.slot(second, off); err != nil {
			return fail("%w", err)
		}
		return put32(int64(pair+uint64(A)-P), true)
	case elf.R_X86_64_DTPOFF32, elf.R_X86_64_DTPOFF64:
		_, off, err := l.tlsModule(rel.Sym)
		if err != nil {
			return fail("%w", err)
		}
		if rel.Type == elf.R_X86_64_DTPOFF64 {
			binary.LittleEndian.PutUint64(field, off+uint64(A))
			return nil
		}
		return put32(int64(off)+A, true)
	}

	s, err := l.symbol(rel.Sym)
	if err != nil {
		return fail("%w", err)
	}
	S := s.addr
	switch rel.Type {
	case elf.R_X86_64_64:
		binary.LittleEndian.PutUint64(field, S+uint64(A))
		return nil
	case elf.R_X86_64_PC64:
		binary.LittleEndian.PutUint64(field, S+uint64(A)-P)
		return nil
	case elf.R_X86_64_32:
		v := S + uint64(A)
		if v > math.MaxUint32 || (A < 0 && S < uint64(-A)) || (A > 0 && v < S) {
			return fail("value %#x does not fit the zero-extended 32-bit field", v)
		}
		return put32(int64(v), false)
	case elf.R_X86_64_32S:
		v := int64(S + uint64(A))
		if !fitsInt32(v) {
			return fail("value %#x does not fit the sign-extended 32-bit field", uint64(v))
		}
		return put32(v, true)
	case elf.R_X86_64_PC32, elf.R_X86_64_PLT32:
		v := int64(S + uint64(A) - P)
		if fitsInt32(v) {
			return put32(v, true)
		}
		// Out of reach. A call or jump can go through a trampoline; the
		// effective target S+A+(end-of-instruction - P) only ever equals S, so
		// replacing S by the trampoline keeps the instruction's meaning.
		if s.local || !(rel.Type == elf.R_X86_64_PLT32 || s.isFunc) {
			return fail("target %#x is out of ±2 GiB reach of %#x: data of another library is only reachable through a GOT; "+
				"compile the patch with -mno-direct-extern-access (or -fPIC) so that it reads such data through one", S, P)
		}
		t, err := l.trampoline(rel.Sym, S)
		if err != nil {
			return fail("%w", err)
		}
		return put32(int64(t+uint64(A)-P), true)
	case elf.R_X86_64_GOTPCREL, elf.R_X86_64_GOTPCRELX, elf.R_X86_64_REX_GOTPCRELX:
		// Relax `mov foo@GOTPCREL(%rip), %reg` to `lea foo(%rip), %reg` when foo
		// is in reach, as ld does: one memory load less on every use.
		if rel.Type != elf.R_X86_64_GOTPCREL && rel.Offset >= 2 &&
			buf[rel.Offset-2] == 0x8b && buf[rel.Offset-1]&0xc7 == 0x05 {
			if v := int64(S + uint64(A) - P); fitsInt32(v) {
				buf[rel.Offset-2] = 0x8d
				return put32(v, true)
			}
		}
		slot, err := l.slot(slotKey{slotAddr, rel.Sym}, S)
		if err != nil {
			return fail("%w", err)
		}
		return put32(int64(slot+uint64(A)-P), true)
	}
	return fail("unsupported relocation type")
}

// slot writes v into the GOT slot of k and returns the slot's address.
func (l *linker) slot(k slotKey, v uint64) (uint64, error) {
	i, ok := l.p.gotSlots[k]
	if !ok {
		return 0, errors.New("no GOT slot was planned for it")
	}
	off := l.p.gotOff + uint64(i)*gotSlotSize
	if !l.slotSet[i] {
		binary.LittleEndian.PutUint64(l.img.Text[off:], v)
		l.slotSet[i] = true
	}
	return l.base + off, nil
}

// trampoline writes `jmp *0(%rip); .quad target` for symbol sym and returns its address.
func (l *linker) trampoline(sym uint32, target uint64) (uint64, error) {
	i, ok := l.p.tramps[sym]
	if !ok {
		return 0, errors.New("no trampoline was planned for it")
	}
	off := l.p.trampOff + uint64(i)*TrampolineSize
	if !l.trampSet[i] {
		t := l.img.Text[off : off+TrampolineSize]
		copy(t, []byte{0xff, 0x25, 0, 0, 0, 0})
		binary.LittleEndian.PutUint64(t[6:], target)
		t[14], t[15] = 0xcc, 0xcc
		l.trampSet[i] = true
		l.img.TrampolinesUsed++
	}
	return l.base + off, nil
}

// funcAddr finds the run-time address and size of a replacement function.
func (l *linker) funcAddr(f patchobj.Func) (FuncAddr, error) {
	fa := FuncAddr{OldName: f.OldName, OldPos: f.OldPos}
	if int(f.New.Sym) >= len(l.o.Symbols) || f.New.Addend < 0 {
		return fa, fmt.Errorf("replacement for %q: bad symbol reference", f.OldName)
	}
	sym := l.o.Symbols[f.New.Sym]
	if !sym.Defined() || sym.Section >= elf.SHN_LORESERVE || int(sym.Section) >= len(l.o.Sections) ||
		l.p.secRegion[sym.Section] != regionText || l.o.Sections[sym.Section].Flags&elf.SHF_EXECINSTR == 0 {
		return fa, fmt.Errorf("replacement for %q: symbol %q is not in a loaded code section", f.OldName, sym.Name)
	}
	sec := l.o.Sections[sym.Section]
	start := sym.Value + uint64(f.New.Addend)
	if start < sym.Value || start >= sec.Size {
		return fa, fmt.Errorf("replacement for %q: offset %#x outside section %q", f.OldName, start, sec.Name)
	}
	fa.New = l.secAddr(int(sym.Section)) + start
	fa.NewSize = sec.Size - start
	if sym.Type == elf.STT_FUNC && f.New.Addend == 0 && sym.Size > 0 {
		fa.NewSize = sym.Size
	} else {
		// A section symbol plus offset: the function symbol at that offset.
		for _, c := range l.o.Symbols {
			if c.Type == elf.STT_FUNC && c.Section == sym.Section && c.Value == start && c.Size > 0 {
				fa.NewSize = c.Size
				break
			}
		}
	}
	if fa.NewSize > sec.Size-start {
		fa.NewSize = sec.Size - start
	}
	return fa, nil
}
