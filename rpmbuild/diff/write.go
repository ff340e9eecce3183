package diff

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"
)

var le = binary.LittleEndian

// strtab builds an ELF string table.
type strtab struct {
	data []byte
	off  map[string]uint32
}

func newStrtab() *strtab { return &strtab{data: []byte{0}, off: map[string]uint32{"": 0}} }

func (t *strtab) add(s string) uint32 {
	if o, ok := t.off[s]; ok {
		return o
	}
	o := uint32(len(t.data))
	t.data = append(append(t.data, s...), 0)
	t.off[s] = o
	return o
}

func align(n, a uint64) uint64 {
	if a <= 1 {
		return n
	}
	return (n + a - 1) / a * a
}

// write lays out the emitted object: ELF header, section contents, relocation
// sections, symbol and string tables, then the section header table.
func (e *emitter) write() ([]byte, error) {
	// Symbols: locals first, as the ELF specification requires (sh_info of .symtab
	// is the index of the first non-local symbol).
	syms := append([]*osym(nil), e.syms...)
	sort.SliceStable(syms, func(i, j int) bool {
		return (syms[i].bind == elf.STB_LOCAL) && (syms[j].bind != elf.STB_LOCAL)
	})
	firstGlobal := len(syms) + 1
	for i, y := range syms {
		y.idx = i + 1
		if y.bind != elf.STB_LOCAL && firstGlobal > len(syms) {
			firstGlobal = i + 1
		}
	}
	// Section indices: null, content sections, their .rela, .symtab, .strtab, .shstrtab.
	all := []*osec{{}}
	for _, s := range e.secs {
		if s.typ == elf.SHT_PROGBITS && s.name == ".upatch.syms" && len(s.data) == 0 {
			continue
		}
		s.idx = len(all)
		all = append(all, s)
	}
	symtab := &osec{name: ".symtab", typ: elf.SHT_SYMTAB, align: 8, entsize: 24}
	strtabSec := &osec{name: ".strtab", typ: elf.SHT_STRTAB, align: 1}
	shstr := &osec{name: ".shstrtab", typ: elf.SHT_STRTAB, align: 1}
	var relas []*osec
	for _, s := range all[1:] {
		if len(s.relas) == 0 {
			continue
		}
		rs := &osec{name: ".rela" + s.name, typ: elf.SHT_RELA, flags: elf.SHF_INFO_LINK, align: 8, entsize: 24, info: uint32(s.idx)}
		sort.SliceStable(s.relas, func(i, j int) bool { return s.relas[i].off < s.relas[j].off })
		for _, r := range s.relas {
			if r.sym == nil {
				return nil, fmt.Errorf("section %s: relocation at %#x has no symbol", s.name, r.off)
			}
			var b [24]byte
			le.PutUint64(b[0:], r.off)
			le.PutUint64(b[8:], uint64(r.sym.idx)<<32|uint64(r.typ))
			le.PutUint64(b[16:], uint64(r.addend))
			rs.data = append(rs.data, b[:]...)
		}
		relas = append(relas, rs)
	}
	for _, rs := range relas {
		rs.idx = len(all)
		all = append(all, rs)
	}
	symtab.idx = len(all)
	strtabSec.idx = symtab.idx + 1
	shstr.idx = symtab.idx + 2
	all = append(all, symtab, strtabSec, shstr)
	for _, rs := range relas {
		rs.link = uint32(symtab.idx)
	}
	st := newStrtab()
	symtab.data = make([]byte, 24, 24*(len(syms)+1))
	for _, y := range syms {
		var b [24]byte
		name := uint32(0)
		if y.typ != elf.STT_SECTION {
			name = st.add(y.name)
		}
		shndx := uint16(elf.SHN_UNDEF)
		switch {
		case y.typ == elf.STT_FILE:
			shndx = uint16(elf.SHN_ABS)
		case y.sec != nil:
			if y.sec.idx == 0 {
				return nil, fmt.Errorf("symbol %q: its section %s is not emitted", y.name, y.sec.name)
			}
			shndx = uint16(y.sec.idx)
		}
		le.PutUint32(b[0:], name)
		b[4] = byte(y.bind)<<4 | byte(y.typ)&0xf
		b[5] = byte(elf.STV_DEFAULT)
		le.PutUint16(b[6:], shndx)
		le.PutUint64(b[8:], y.value)
		le.PutUint64(b[16:], y.size)
		symtab.data = append(symtab.data, b[:]...)
	}
	symtab.link = uint32(strtabSec.idx)
	symtab.info = uint32(firstGlobal)
	strtabSec.data = st.data
	sh := newStrtab()
	names := make([]uint32, len(all))
	for i, s := range all[1:] {
		names[i+1] = sh.add(s.name)
	}
	shstr.data = sh.data

	if len(all) >= int(elf.SHN_LORESERVE) {
		return nil, fmt.Errorf("patch object: %d sections, more than ELF allows without extended numbering", len(all))
	}
	out := make([]byte, 64)
	offs := make([]uint64, len(all))
	for i, s := range all[1:] {
		if s.typ != elf.SHT_NOBITS {
			s.size = uint64(len(s.data))
		}
		a := s.align
		if a == 0 {
			a = 1
		}
		off := align(uint64(len(out)), a)
		out = append(out, make([]byte, off-uint64(len(out)))...)
		offs[i+1] = off
		if s.typ != elf.SHT_NOBITS {
			out = append(out, s.data...)
		}
	}
	shoff := align(uint64(len(out)), 8)
	out = append(out, make([]byte, shoff-uint64(len(out)))...)
	for i, s := range all {
		var b [64]byte
		if i > 0 {
			le.PutUint32(b[0:], names[i])
			le.PutUint32(b[4:], uint32(s.typ))
			le.PutUint64(b[8:], uint64(s.flags))
			le.PutUint64(b[24:], offs[i])
			le.PutUint64(b[32:], s.size)
			le.PutUint32(b[40:], s.link)
			le.PutUint32(b[44:], s.info)
			le.PutUint64(b[48:], s.align)
			le.PutUint64(b[56:], s.entsize)
		}
		out = append(out, b[:]...)
	}
	h := out[:64]
	copy(h, []byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT), byte(elf.ELFOSABI_NONE)})
	le.PutUint16(h[16:], uint16(elf.ET_REL))
	le.PutUint16(h[18:], uint16(elf.EM_X86_64))
	le.PutUint32(h[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(h[40:], shoff)
	le.PutUint16(h[52:], 64)
	le.PutUint16(h[58:], 64)
	le.PutUint16(h[60:], uint16(len(all)))
	le.PutUint16(h[62:], uint16(shstr.idx))
	return out, nil
}
