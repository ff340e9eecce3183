package symbols

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// readPLT maps dynamic symbol names to their GOT slots (from the RELA sections
// that relocate against .dynsym) and to the PLT entries jumping through them.
//
// PLT entries are found by decoding, not by index arithmetic: every x86-64 PLT
// flavour (lazy .plt, IBT's .plt.sec, the non-lazy .plt.got of -z now) contains
// one `jmp *disp32(%rip)` (ff 25, maybe after a bnd prefix f2 and an endbr64)
// whose target is the symbol's GOT slot, so decoding the jumps is independent of
// entry sizes and of the order of .rela.plt.
func (e *ELF) readPLT(f *elf.File, dyn *elf.Section) error {
	dynIndex := -1
	for i, s := range f.Sections {
		if s == dyn {
			dynIndex = i
		}
	}
	// Symbol names by .dynsym index, undefined ones included (imports are what
	// the PLT calls), read straight from the section.
	data, err := elfsafe.SectionData(dyn)
	if err != nil {
		return fmt.Errorf("section .dynsym: %w", err)
	}
	if int(dyn.Link) <= 0 || int(dyn.Link) >= len(f.Sections) {
		return fmt.Errorf("section .dynsym: string table index %d out of range", dyn.Link)
	}
	strb, err := elfsafe.SectionData(f.Sections[dyn.Link])
	if err != nil {
		return fmt.Errorf("section .dynstr: %w", err)
	}
	strs := string(strb)
	nsyms := len(data) / elf.Sym64Size
	nameOf := func(i uint32) string {
		if i == 0 || uint64(i) >= uint64(nsyms) {
			return ""
		}
		return cstring(strs, binary.LittleEndian.Uint32(data[int(i)*elf.Sym64Size:]))
	}

	slotName := map[uint64]string{}
	e.gotSlot = map[string]uint64{}
	localDynamic := false
	for _, s := range f.Sections {
		if s.Type != elf.SHT_RELA || int(s.Link) != dynIndex {
			continue
		}
		rd, err := elfsafe.SectionData(s)
		if err != nil {
			return fmt.Errorf("section %q: %w", s.Name, err)
		}
		for off := 0; off+24 <= len(rd); off += 24 {
			slot := binary.LittleEndian.Uint64(rd[off:])
			info := binary.LittleEndian.Uint64(rd[off+8:])
			typ := elf.R_X86_64(info & 0xffffffff)
			// The file's own module id: a local-dynamic reference (symbol 0) is sure to
			// be it; one against a symbol the file defines is, unless another module
			// defines the same name first, so it only stands in when there is no other.
			if typ == elf.R_X86_64_DTPMOD64 {
				switch sym := uint32(info >> 32); {
				case sym == 0:
					e.TLSModuleSlot, localDynamic = slot, true
				case !localDynamic && e.TLSModuleSlot == 0 && definedHere(data, sym):
					e.TLSModuleSlot = slot
				}
			}
			if typ != elf.R_X86_64_JMP_SLOT && typ != elf.R_X86_64_GLOB_DAT {
				continue
			}
			name := nameOf(uint32(info >> 32))
			if name == "" {
				continue
			}
			slotName[slot] = name
			if _, ok := e.gotSlot[name]; !ok || typ == elf.R_X86_64_JMP_SLOT {
				e.gotSlot[name] = slot
			}
		}
	}
	if len(slotName) == 0 {
		return nil
	}
	e.plt = map[string]uint64{}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_EXECINSTR == 0 || !strings.HasPrefix(s.Name, ".plt") {
			continue
		}
		code, err := elfsafe.SectionData(s)
		if err != nil {
			return fmt.Errorf("section %q: %w", s.Name, err)
		}
		for i := 0; i+6 <= len(code); i++ {
			if code[i] != 0xff || code[i+1] != 0x25 {
				continue
			}
			disp := int64(int32(binary.LittleEndian.Uint32(code[i+2:])))
			target := uint64(int64(s.Addr) + int64(i) + 6 + disp)
			name, ok := slotName[target]
			if !ok {
				continue
			}
			start := i
			if start >= 1 && code[start-1] == 0xf2 { // bnd prefix
				start--
			}
			if start >= 4 && code[start-4] == 0xf3 && code[start-3] == 0x0f && code[start-2] == 0x1e && code[start-1] == 0xfa {
				start -= 4 // endbr64 opens the entry
			}
			addr := s.Addr + uint64(start)
			// .plt.sec is preferred over the lazy .plt stub when both exist:
			// it is what calls in the code target.
			if _, seen := e.plt[name]; !seen || s.Name == ".plt.sec" {
				e.plt[name] = addr
			}
			i += 5
		}
	}
	return nil
}

// definedHere tells whether .dynsym entry i (data is the section) is defined in the
// file.
func definedHere(dynsym []byte, i uint32) bool {
	at := int(i) * elf.Sym64Size
	if at+elf.Sym64Size > len(dynsym) {
		return false
	}
	return binary.LittleEndian.Uint16(dynsym[at+6:]) != uint16(elf.SHN_UNDEF)
}
