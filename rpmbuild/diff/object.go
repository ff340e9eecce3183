package diff

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// maxSection bounds the size of one section we read, so that a hostile header cannot
// make us allocate gigabytes.
const maxSection = 1 << 30

// object is one relocatable ELF file, read into plain data.
type object struct {
	elf   *elf.File
	file  string // the STT_FILE name: the source file of the translation unit
	secs  []*section
	syms  []*symbol
	other *object
	// patched tells the patched object from the original.
	patched bool
	// tables names the sections of Options.Tables and their Aux sections.
	tables map[string]bool
}

type section struct {
	idx     int
	name    string
	typ     elf.SectionType
	flags   elf.SectionFlag
	align   uint64
	entsize uint64
	size    uint64
	link    uint32
	info    uint32
	data    []byte
	relas   []rela
	syms    []*symbol // defined named symbols in this section, by value
	secsym  *symbol
	group   *section // the SHT_GROUP that holds this section
	members []*section

	twin     *section
	status   Status
	lineOnly bool
	reason   string // why a section without byte changes counts as changed
	include  bool
	ends     []int // instruction end offsets, decoded lazily (text only)
	decoded  bool
	// pool marks anonymous read-only data holding literals; pieces are the offsets
	// that relocations reach in it, in order (see findPools).
	pool   bool
	pieces []int64
	// table marks a section of Options.Tables (or a table's Aux section) or of
	// Options.Owned: it takes no part in the comparison; the patch carries the entries
	// of the included code (Tables), or the whole section when it is referenced.
	table bool
}

type symbol struct {
	idx   int
	name  string
	bind  elf.SymBind
	typ   elf.SymType
	shndx elf.SectionIndex
	value uint64
	size  uint64
	sec   *section

	twin   *symbol
	status Status
}

type rela struct {
	off    uint64
	typ    elf.R_X86_64
	sym    *symbol
	addend int64
}

func (s *section) exec() bool  { return s.flags&elf.SHF_EXECINSTR != 0 }
func (s *section) write() bool { return s.flags&elf.SHF_WRITE != 0 }
func (s *section) alloc() bool { return s.flags&elf.SHF_ALLOC != 0 }
func (s *section) tls() bool   { return s.flags&elf.SHF_TLS != 0 }

// merge tells whether the section's contents are compared and carried piece by piece
// (its strings or constants) rather than as a whole: SHF_MERGE sections and pools.
func (s *section) merge() bool { return s.flags&elf.SHF_MERGE != 0 || s.pool }

// interesting tells whether a section takes part in the comparison: allocated code and
// data, and COMDAT groups. Unwind tables and debug info follow the code they describe.
func (s *section) interesting() bool {
	if s.table {
		return false
	}
	if s.typ == elf.SHT_GROUP {
		return true
	}
	if !s.alloc() {
		return false
	}
	switch s.typ {
	case elf.SHT_PROGBITS, elf.SHT_NOBITS, elf.SHT_INIT_ARRAY, elf.SHT_FINI_ARRAY, elf.SHT_PREINIT_ARRAY:
	default:
		return false
	}
	return !strings.HasPrefix(s.name, ".eh_frame") && !strings.HasPrefix(s.name, ".note")
}

// primary is the symbol that names a section: its function or variable.
func (s *section) primary() *symbol {
	var best *symbol
	for _, y := range s.syms {
		if y.typ != elf.STT_FUNC && y.typ != elf.STT_OBJECT && y.typ != elf.STT_TLS && y.typ != elf.STT_GNU_IFUNC {
			continue
		}
		if best == nil || (best.bind == elf.STB_LOCAL && y.bind != elf.STB_LOCAL && y.value == best.value) {
			best = y
		}
	}
	return best
}

// named tells whether a symbol stands for a function or variable (not a section,
// file or assembler label).
func (y *symbol) named() bool {
	switch y.typ {
	case elf.STT_FUNC, elf.STT_OBJECT, elf.STT_TLS, elf.STT_GNU_IFUNC, elf.STT_COMMON:
		return y.name != ""
	case elf.STT_NOTYPE:
		return y.name != "" && !strings.HasPrefix(y.name, ".L")
	}
	return false
}

func (y *symbol) defined() bool { return y.shndx != elf.SHN_UNDEF }

func (y *symbol) kind() string {
	switch y.typ {
	case elf.STT_FUNC:
		return "func"
	case elf.STT_OBJECT, elf.STT_COMMON:
		return "object"
	case elf.STT_TLS:
		return "tls"
	case elf.STT_GNU_IFUNC:
		return "ifunc"
	}
	return "notype"
}

func readObject(r io.ReaderAt, what string) (*object, error) {
	return readObjectTables(r, what, nil)
}

// readObjectTables reads an object whose sections named in tables are tables of
// entries indexing code (see Table).
func readObjectTables(r io.ReaderAt, what string, tables map[string]bool) (*object, error) {
	f, err := elfsafe.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%s object: %w", what, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%s object: %w: not an x86-64 ELF64 little-endian file", what, elfsafe.ErrMalformed)
	}
	if f.Type != elf.ET_REL {
		return nil, fmt.Errorf("%s object: %w: ELF type %v, want ET_REL", what, elfsafe.ErrMalformed, f.Type)
	}
	o := &object{elf: f, tables: tables}
	err = elfsafe.Guard(what+" object", func() error { return o.load() })
	if err != nil {
		return nil, fmt.Errorf("%s object: %w", what, err)
	}
	return o, nil
}

func (o *object) load() error {
	f := o.elf
	o.secs = make([]*section, len(f.Sections))
	for i, s := range f.Sections {
		sec := &section{idx: i, name: s.Name, typ: s.Type, flags: s.Flags, align: s.Addralign,
			entsize: s.Entsize, size: s.Size, link: s.Link, info: s.Info, table: o.tables[s.Name]}
		o.secs[i] = sec
		if sec.align > 1<<16 || sec.align&(sec.align-1) != 0 {
			return fmt.Errorf("section %q: alignment %d is not a power of two up to 64 KiB", s.Name, sec.align)
		}
		if s.Type == elf.SHT_NOBITS || s.Type == elf.SHT_NULL || strings.HasPrefix(s.Name, ".debug") {
			continue
		}
		if s.Size > maxSection {
			return fmt.Errorf("section %q: size %d too large", s.Name, s.Size)
		}
		if s.Type == elf.SHT_SYMTAB || s.Type == elf.SHT_STRTAB {
			continue
		}
		data, err := elfsafe.SectionData(s)
		if err != nil {
			return fmt.Errorf("section %q: %w", s.Name, err)
		}
		sec.data = data
		if uint64(len(data)) != sec.size {
			return fmt.Errorf("section %q: %d bytes of data, header says %d", s.Name, len(data), sec.size)
		}
	}
	syms, err := elfsafe.Symbols(f)
	if err != nil && err != elf.ErrNoSymbols {
		return fmt.Errorf("symbol table: %w", err)
	}
	o.syms = make([]*symbol, len(syms)+1)
	o.syms[0] = &symbol{}
	for i, s := range syms {
		y := &symbol{idx: i + 1, name: s.Name, bind: elf.ST_BIND(s.Info), typ: elf.ST_TYPE(s.Info),
			shndx: s.Section, value: s.Value, size: s.Size}
		if y.shndx != elf.SHN_UNDEF && y.shndx < elf.SHN_LORESERVE {
			if int(y.shndx) >= len(o.secs) {
				return fmt.Errorf("symbol %q: section index %d out of range", y.name, y.shndx)
			}
			y.sec = o.secs[y.shndx]
		}
		switch {
		case y.typ == elf.STT_FILE:
			if o.file == "" {
				o.file = y.name
			}
		case y.typ == elf.STT_SECTION && y.sec != nil:
			if y.sec.secsym == nil {
				y.sec.secsym = y
			}
			y.name = y.sec.name
		case y.sec != nil && y.named():
			y.sec.syms = append(y.sec.syms, y)
		}
		o.syms[i+1] = y
	}
	for _, sec := range o.secs {
		sort.SliceStable(sec.syms, func(i, j int) bool { return sec.syms[i].value < sec.syms[j].value })
		switch sec.typ {
		case elf.SHT_RELA:
			if err := o.readRela(sec); err != nil {
				return err
			}
		case elf.SHT_REL:
			return fmt.Errorf("section %q: SHT_REL relocations are not used on x86-64", sec.name)
		case elf.SHT_GROUP:
			if err := o.readGroup(sec); err != nil {
				return err
			}
		}
	}
	o.findPools()
	return nil
}

// findPools marks the read-only data sections in which gcc puts literals without a
// symbol or a section of their own: every string of a file shares one .rodata at -O0
// (and in other builds that do not use mergeable string sections). Such a section has
// no symbol naming any part of it and no relocations of its own. It is compared like a
// SHF_MERGE section, by the piece each relocation reaches: the bytes from that offset to
// the next reached offset (or the end), so that one changed message neither changes
// the unchanged strings next to it nor drags in the tables that point at them. Every
// byte that any reference can reach belongs to one piece, so no change goes unseen.
func (o *object) findPools() {
	for _, s := range o.secs {
		if s.typ == elf.SHT_PROGBITS && s.alloc() && !s.write() && !s.exec() && !s.tls() && s.flags&elf.SHF_MERGE == 0 &&
			(s.name == ".rodata" || strings.HasPrefix(s.name, ".rodata.")) && len(s.syms) == 0 && len(s.relas) == 0 && s.group == nil {
			s.pool = true
		}
	}
	for _, s := range o.secs {
		for _, r := range s.relas {
			if r.sym != nil && r.sym.sec != nil && r.sym.sec.pool {
				r.sym.sec.pieces = append(r.sym.sec.pieces, o.targetOffset(s, r))
			}
		}
	}
	for _, s := range o.secs {
		if !s.pool {
			continue
		}
		if len(s.pieces) == 0 {
			s.pool = false // nothing reaches it: compared whole, as before
			continue
		}
		sort.Slice(s.pieces, func(i, j int) bool { return s.pieces[i] < s.pieces[j] })
		s.pieces = slices.Compact(s.pieces)
	}
}

// piece returns the bytes of pool s from off to the next reached offset.
func (s *section) piece(off int64) []byte {
	i := sort.Search(len(s.pieces), func(i int) bool { return s.pieces[i] > off })
	end := int64(len(s.data))
	if i < len(s.pieces) {
		end = min(s.pieces[i], end)
	}
	if off < 0 || off > end {
		return nil
	}
	return s.data[off:end]
}

func (o *object) readRela(s *section) error {
	if int(s.info) <= 0 || int(s.info) >= len(o.secs) {
		return fmt.Errorf("section %q: target section %d out of range", s.name, s.info)
	}
	target := o.secs[s.info]
	if strings.HasPrefix(target.name, ".debug") || !target.interesting() && !target.table {
		return nil
	}
	if len(s.data)%24 != 0 {
		return fmt.Errorf("section %q: size %d is not a multiple of 24", s.name, len(s.data))
	}
	for i := 0; i+24 <= len(s.data); i += 24 {
		info := binary.LittleEndian.Uint64(s.data[i+8:])
		r := rela{
			off:    binary.LittleEndian.Uint64(s.data[i:]),
			typ:    elf.R_X86_64(info & 0xffffffff),
			addend: int64(binary.LittleEndian.Uint64(s.data[i+16:])),
		}
		si := info >> 32
		if si == 0 || si >= uint64(len(o.syms)) {
			return fmt.Errorf("section %q: relocation at %#x: symbol index %d out of range", target.name, r.off, si)
		}
		r.sym = o.syms[si]
		if r.off > target.size || r.off+relocSize(r.typ) > target.size {
			return fmt.Errorf("section %q: relocation at %#x lies outside the section", target.name, r.off)
		}
		target.relas = append(target.relas, r)
	}
	sort.SliceStable(target.relas, func(i, j int) bool { return target.relas[i].off < target.relas[j].off })
	return nil
}

func (o *object) readGroup(s *section) error {
	if len(s.data)%4 != 0 || len(s.data) < 4 {
		return fmt.Errorf("section %q: malformed group", s.name)
	}
	for i := 4; i+4 <= len(s.data); i += 4 {
		m := binary.LittleEndian.Uint32(s.data[i:])
		if int(m) <= 0 || int(m) >= len(o.secs) {
			return fmt.Errorf("section %q: member %d out of range", s.name, m)
		}
		o.secs[m].group = s
		s.members = append(s.members, o.secs[m])
	}
	return nil
}

// groupSignature is the name of the symbol that identifies a COMDAT group.
func (o *object) groupSignature(s *section) string {
	if int(s.info) > 0 && int(s.info) < len(o.syms) {
		return o.syms[s.info].name
	}
	return s.name
}

func relocSize(t elf.R_X86_64) uint64 {
	switch t {
	case elf.R_X86_64_NONE:
		return 0
	case elf.R_X86_64_64, elf.R_X86_64_PC64, elf.R_X86_64_GOTOFF64, elf.R_X86_64_DTPOFF64, elf.R_X86_64_TPOFF64:
		return 8
	default:
		return 4
	}
}

func pcRelative(t elf.R_X86_64) bool {
	switch t {
	case elf.R_X86_64_PC32, elf.R_X86_64_PLT32, elf.R_X86_64_GOTPCREL, elf.R_X86_64_GOTPCRELX,
		elf.R_X86_64_REX_GOTPCRELX, elf.R_X86_64_GOTTPOFF, elf.R_X86_64_TLSGD, elf.R_X86_64_TLSLD,
		elf.R_X86_64_GOTPC32, elf.R_X86_64_PC64:
		return true
	}
	return false
}

// decode splits a code section into instructions (gcc puts no data in .text, and its
// padding is NOPs, so a linear sweep is exact). On failure ends stays nil.
func (s *section) decode() []int {
	if s.decoded {
		return s.ends
	}
	s.decoded = true
	var ends []int
	ok := true
	func() {
		defer func() {
			if recover() != nil {
				ok = false
			}
		}()
		for off := 0; off < len(s.data); {
			in, err := x86asm.Decode(s.data[off:], 64)
			if err != nil || in.Len <= 0 {
				ok = false
				return
			}
			off += in.Len
			ends = append(ends, off)
		}
	}()
	if ok {
		s.ends = ends
	}
	return s.ends
}

// targetOffset is where, inside the target symbol's section, a relocation points:
// for PC-relative forms the addend also carries the distance from the relocated field
// to the end of the instruction, which we take back out.
func (o *object) targetOffset(s *section, r rela) int64 {
	t := r.addend
	if r.sym != nil {
		t += int64(r.sym.value)
	}
	if pcRelative(r.typ) && r.typ != elf.R_X86_64_PC64 {
		adj := int64(4)
		if s.exec() {
			if ends := s.decode(); ends != nil {
				i := sort.SearchInts(ends, int(r.off)+1)
				if i < len(ends) {
					adj = int64(ends[i]) - int64(r.off)
				}
			}
		} else {
			adj = 0 // data: .long sym - . has no instruction tail
		}
		t += adj
	}
	return t
}

// covering finds the named symbol of sec that contains offset off.
func (s *section) covering(off int64) *symbol {
	var best *symbol
	for _, y := range s.syms {
		if y.typ == elf.STT_NOTYPE {
			continue
		}
		if off >= int64(y.value) && (off < int64(y.value+y.size) || (y.size == 0 && off == int64(y.value))) {
			if best == nil || (best.bind == elf.STB_LOCAL && y.bind != elf.STB_LOCAL) {
				best = y
			}
		}
	}
	if best == nil && len(s.syms) > 0 && off == int64(s.size) {
		// one past the end, e.g. an end-of-array pointer
		for _, y := range s.syms {
			if y.typ != elf.STT_NOTYPE && y.value+y.size == s.size {
				return y
			}
		}
	}
	return best
}
