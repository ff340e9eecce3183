package patchobj

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// Section names and entry sizes of the format (see the package documentation).
const (
	FuncsSection   = ".upatch.funcs"
	SymsSection    = ".upatch.syms"
	BuildIDSection = ".upatch.build_id"
	StringsSection = ".upatch.strings"
	VersionSection = ".upatch.version"
	OffsetsSection = ".upatch.offsets"

	FuncEntrySize   = 32
	SymEntrySize    = 24
	OffsetEntrySize = 48

	// FormatVersion is the format this package reads and writes. Format 1 had no
	// version section and left every target symbol to a lookup by name at load time.
	FormatVersion = 2
)

// OffsetKind tells what an entry of .upatch.offsets resolves.
type OffsetKind uint8

// The kinds of .upatch.offsets entries.
const (
	// OffsetFunc resolves a replaced function: its key is an entry of .upatch.funcs.
	OffsetFunc OffsetKind = 1
	// OffsetSymbol resolves a symbol the new code uses: its key is what an undefined
	// symbol stands for (Object.Target).
	OffsetSymbol OffsetKind = 2
)

// ErrInvalid is wrapped by every error about a malformed patch object.
var ErrInvalid = errors.New("invalid patch object")

// Supported lists the relocation types a loaded section may carry.
var Supported = map[elf.R_X86_64]bool{
	elf.R_X86_64_NONE:          true,
	elf.R_X86_64_64:            true,
	elf.R_X86_64_PC32:          true,
	elf.R_X86_64_PLT32:         true,
	elf.R_X86_64_32:            true,
	elf.R_X86_64_32S:           true,
	elf.R_X86_64_PC64:          true,
	elf.R_X86_64_GOTPCREL:      true,
	elf.R_X86_64_GOTPCRELX:     true,
	elf.R_X86_64_REX_GOTPCRELX: true,
	elf.R_X86_64_TPOFF32:       true,
	elf.R_X86_64_GOTTPOFF:      true,
	elf.R_X86_64_TLSGD:         true,
	elf.R_X86_64_TLSLD:         true,
	elf.R_X86_64_DTPOFF32:      true,
	elf.R_X86_64_DTPOFF64:      true,
}

// Object is a parsed patch object. It is plain data: parsing touches no process.
type Object struct {
	// Sections is indexed by ELF section index; entry 0 is the null section.
	Sections []*Section
	// Symbols is indexed by ELF symbol index; entry 0 is the null symbol.
	Symbols []Symbol
	// Funcs lists the replaced functions in table order.
	Funcs []Func
	// SymbolPos maps an undefined symbol name to the target symbol it stands for.
	SymbolPos map[string]TargetSym
	// TargetBuildID is the recorded build-id of the target ELF, nil if none.
	TargetBuildID []byte
	// Version is the format version the object declares.
	Version uint32
	// Offsets holds the target symbols resolved when the patch was built; nil when the
	// object has no .upatch.offsets section (a hand-written patch).
	Offsets map[OffsetKey]Offset
}

// OffsetKey names a resolved target symbol: a replaced function (name and position as
// in .upatch.funcs) or a symbol the new code uses (as in .upatch.syms).
type OffsetKey struct {
	Kind OffsetKind
	Name string
	Pos  uint64
}

// Offset is where a target symbol lies in the target ELF, read from its debuginfo by
// the builder. Value is the link-time address (st_value), so its run-time address is
// the ELF's load bias plus Value; for a thread-local symbol it is the offset inside
// the ELF's TLS block.
type Offset struct {
	Value uint64
	Size  uint64
	// Room is, for a replaced function, how many bytes from Value the loader may
	// overwrite with its jump: Size, or up to the next symbol when the function is
	// shorter than the longest jump (the bytes past Size must be padding). 0 for data.
	Room uint64
	Type elf.SymType
}

// SelfContained tells whether the object carries its target symbols' offsets, so that
// applying it needs neither the target's symbol table nor its debuginfo.
func (o *Object) SelfContained() bool { return o.Offsets != nil }

// FuncOffset returns the recorded offset of the function f replaces.
func (o *Object) FuncOffset(f Func) (Offset, bool) {
	off, ok := o.Offsets[OffsetKey{Kind: OffsetFunc, Name: f.OldName, Pos: f.OldPos}]
	return off, ok
}

// SymbolOffset returns the recorded offset of the target symbol t.
func (o *Object) SymbolOffset(t TargetSym) (Offset, bool) {
	off, ok := o.Offsets[OffsetKey{Kind: OffsetSymbol, Name: t.Name, Pos: t.Pos}]
	return off, ok
}

// Section is one section of the object.
type Section struct {
	Index     int
	Name      string
	Type      elf.SectionType
	Flags     elf.SectionFlag
	Addralign uint64
	Size      uint64
	// Data holds the contents; nil for SHT_NOBITS.
	Data []byte
	// Relocs are the relocations that apply to this section.
	Relocs []Reloc
	// Load tells whether the loader places this section in the process.
	Load bool
}

// Reloc is one RELA relocation.
type Reloc struct {
	Offset uint64
	Type   elf.R_X86_64
	Sym    uint32 // index into Object.Symbols
	Addend int64
}

// Symbol is one symbol table entry.
type Symbol struct {
	Name    string
	Bind    elf.SymBind
	Type    elf.SymType
	Section elf.SectionIndex // SHN_UNDEF, SHN_ABS, SHN_COMMON or a section index
	Value   uint64
	Size    uint64
}

// Defined tells whether the symbol is defined in this object.
func (s Symbol) Defined() bool { return s.Section != elf.SHN_UNDEF }

// SymRef is a symbol plus addend, as carried by a relocation.
type SymRef struct {
	Sym    uint32
	Addend int64
}

// TargetSym names a symbol of the target: its name and 1-based position among
// symbols of that name in .symtab order (0 when the name is unique).
type TargetSym struct {
	Name string
	Pos  uint64
}

// Target returns the target symbol an undefined symbol of the object stands for.
func (o *Object) Target(name string) TargetSym {
	if t, ok := o.SymbolPos[name]; ok {
		return t
	}
	return TargetSym{Name: name}
}

// Func describes one replaced function.
type Func struct {
	// New is the replacement function (a defined symbol of this object).
	New SymRef
	// OldName is the symbol name of the replaced function in the target.
	OldName string
	// OldPos is 0 for a unique name, else the 1-based position among same-named symbols.
	OldPos uint64
}

// NewName returns a printable name for the replacement of f.
func (o *Object) NewName(f Func) string {
	s := o.Symbols[f.New.Sym]
	if s.Type == elf.STT_SECTION {
		for _, c := range o.Symbols {
			if c.Type == elf.STT_FUNC && c.Section == s.Section && int64(c.Value) == f.New.Addend {
				return c.Name
			}
		}
		return fmt.Sprintf("%s+%#x", o.Sections[s.Section].Name, f.New.Addend)
	}
	return s.Name
}

// Parse reads a patch object. It never panics on malformed input.
func Parse(r io.ReaderAt) (*Object, error) {
	f, err := elfsafe.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var o *Object
	err = elfsafe.Guard("parse patch object", func() error {
		var err error
		o, err = parse(f)
		return err
	})
	if err != nil {
		if errors.Is(err, ErrInvalid) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return o, nil
}

// ParseBytes is Parse over an in-memory object.
func ParseBytes(b []byte) (*Object, error) { return Parse(bytes.NewReader(b)) }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func parse(f *elf.File) (*Object, error) {
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return nil, invalid("not a 64-bit little-endian ELF")
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, invalid("machine %v, want EM_X86_64", f.Machine)
	}
	if f.Type != elf.ET_REL {
		return nil, invalid("ELF type %v, want ET_REL (an object file from gcc -c)", f.Type)
	}
	o := &Object{SymbolPos: map[string]TargetSym{}}
	o.Sections = make([]*Section, len(f.Sections))
	for i, s := range f.Sections {
		sec := &Section{Index: i, Name: s.Name, Type: s.Type, Flags: s.Flags, Addralign: s.Addralign, Size: s.Size}
		if s.Type != elf.SHT_NOBITS && s.Type != elf.SHT_NULL {
			if s.Size > 1<<30 {
				return nil, invalid("section %q: size %d too large", s.Name, s.Size)
			}
			data, err := elfsafe.SectionData(s)
			if err != nil {
				return nil, invalid("section %q: %v", s.Name, err)
			}
			sec.Data = data
		}
		sec.Load = loadable(sec)
		o.Sections[i] = sec
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, invalid("symbol table: %v", err)
	}
	o.Symbols = make([]Symbol, len(syms)+1)
	for i, s := range syms {
		sym := Symbol{Name: s.Name, Bind: elf.ST_BIND(s.Info), Type: elf.ST_TYPE(s.Info), Section: s.Section, Value: s.Value, Size: s.Size}
		if sym.Section != elf.SHN_UNDEF && sym.Section < elf.SHN_LORESERVE && int(sym.Section) >= len(o.Sections) {
			return nil, invalid("symbol %q: section index %d out of range", s.Name, s.Section)
		}
		if sym.Type == elf.STT_TLS && sym.Defined() {
			return nil, invalid("symbol %q: new thread-local variables cannot be added to a running process", s.Name)
		}
		o.Symbols[i+1] = sym
	}
	for _, s := range f.Sections {
		if s.Type == elf.SHT_REL {
			return nil, invalid("section %q: SHT_REL relocations are not used on x86-64", s.Name)
		}
		if s.Type != elf.SHT_RELA {
			continue
		}
		if int(s.Info) <= 0 || int(s.Info) >= len(o.Sections) {
			return nil, invalid("section %q: target section %d out of range", s.Name, s.Info)
		}
		target := o.Sections[s.Info]
		relocs, err := parseRela(o, s, target)
		if err != nil {
			return nil, err
		}
		target.Relocs = append(target.Relocs, relocs...)
	}
	if err := o.readVersion(); err != nil {
		return nil, err
	}
	if err := o.readFuncs(); err != nil {
		return nil, err
	}
	if err := o.readSyms(); err != nil {
		return nil, err
	}
	if err := o.readBuildID(); err != nil {
		return nil, err
	}
	if err := o.readOffsets(); err != nil {
		return nil, err
	}
	return o, nil
}

func loadable(s *Section) bool {
	if s.Flags&elf.SHF_ALLOC == 0 || s.Size == 0 {
		return false
	}
	if s.Type == elf.SHT_GROUP || s.Type == elf.SHT_NOTE {
		return false
	}
	for _, p := range []string{".upatch.", ".note", ".eh_frame", ".debug", ".comment"} {
		if strings.HasPrefix(s.Name, p) {
			return false
		}
	}
	if s.Flags&elf.SHF_TLS != 0 {
		return false // refused through its symbols; never mapped
	}
	return true
}

func parseRela(o *Object, s *elf.Section, target *Section) ([]Reloc, error) {
	data, err := elfsafe.SectionData(s)
	if err != nil {
		return nil, invalid("section %q: %v", s.Name, err)
	}
	if len(data)%24 != 0 {
		return nil, invalid("section %q: size %d is not a multiple of 24", s.Name, len(data))
	}
	out := make([]Reloc, 0, len(data)/24)
	for i := 0; i < len(data); i += 24 {
		off := binary.LittleEndian.Uint64(data[i:])
		info := binary.LittleEndian.Uint64(data[i+8:])
		add := int64(binary.LittleEndian.Uint64(data[i+16:]))
		r := Reloc{Offset: off, Type: elf.R_X86_64(info & 0xffffffff), Sym: uint32(info >> 32), Addend: add}
		if int(r.Sym) >= len(o.Symbols) {
			return nil, invalid("section %q: relocation at %#x: symbol index %d out of range", target.Name, off, r.Sym)
		}
		if target.Load {
			if !Supported[r.Type] {
				return nil, invalid("section %q: unsupported relocation %v at %#x (symbol %q)", target.Name, r.Type, off, o.Symbols[r.Sym].Name)
			}
			if off >= target.Size || off+relocSize(r.Type) > target.Size {
				return nil, invalid("section %q: relocation at %#x lies outside the section", target.Name, off)
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// relocSize is the number of bytes a relocation of type t writes.
func relocSize(t elf.R_X86_64) uint64 {
	switch t {
	case elf.R_X86_64_NONE:
		return 0
	case elf.R_X86_64_64, elf.R_X86_64_PC64, elf.R_X86_64_DTPOFF64:
		return 8
	default:
		return 4
	}
}

// RelocSize is the number of bytes a relocation of type t writes.
func RelocSize(t elf.R_X86_64) uint64 { return relocSize(t) }

// relocAt finds the R_X86_64_64 relocation of sec at off.
func (o *Object) relocAt(sec *Section, off uint64) (Reloc, bool) {
	for _, r := range sec.Relocs {
		if r.Offset == off {
			return r, r.Type == elf.R_X86_64_64
		}
	}
	return Reloc{}, false
}

// stringAt reads the NUL-terminated string a relocation points to.
func (o *Object) stringAt(r Reloc) (string, error) {
	sym := o.Symbols[r.Sym]
	if !sym.Defined() || sym.Section >= elf.SHN_LORESERVE {
		return "", fmt.Errorf("name points to undefined symbol %q", sym.Name)
	}
	sec := o.Sections[sym.Section]
	start := int64(sym.Value) + r.Addend
	if sec.Data == nil || start < 0 || start >= int64(len(sec.Data)) {
		return "", fmt.Errorf("name points outside section %q", sec.Name)
	}
	b := sec.Data[start:]
	n := bytes.IndexByte(b, 0)
	if n < 0 {
		return "", fmt.Errorf("name in section %q is not NUL-terminated", sec.Name)
	}
	if n == 0 {
		return "", errors.New("empty name")
	}
	return string(b[:n]), nil
}

func (o *Object) section(name string) *Section {
	for _, s := range o.Sections {
		if s != nil && s.Name == name {
			return s
		}
	}
	return nil
}

func (o *Object) readFuncs() error {
	sec := o.section(FuncsSection)
	if sec == nil {
		return invalid("no %s section: the object replaces no function (use UPATCH_FUNC)", FuncsSection)
	}
	if len(sec.Data) == 0 || len(sec.Data)%FuncEntrySize != 0 {
		return invalid("section %s: size %d is not a positive multiple of %d", FuncsSection, len(sec.Data), FuncEntrySize)
	}
	seen := map[string]bool{}
	for off := 0; off < len(sec.Data); off += FuncEntrySize {
		newR, ok := o.relocAt(sec, uint64(off))
		if !ok {
			return invalid("%s entry %d: new function has no R_X86_64_64 relocation", FuncsSection, off/FuncEntrySize)
		}
		nameR, ok := o.relocAt(sec, uint64(off+8))
		if !ok {
			return invalid("%s entry %d: old name has no R_X86_64_64 relocation", FuncsSection, off/FuncEntrySize)
		}
		name, err := o.stringAt(nameR)
		if err != nil {
			return invalid("%s entry %d: %v", FuncsSection, off/FuncEntrySize, err)
		}
		pos := binary.LittleEndian.Uint64(sec.Data[off+16:])
		if flags := binary.LittleEndian.Uint64(sec.Data[off+24:]); flags != 0 {
			return invalid("%s entry for %q: reserved flags %#x set", FuncsSection, name, flags)
		}
		nsym := o.Symbols[newR.Sym]
		if !nsym.Defined() || nsym.Section >= elf.SHN_LORESERVE {
			return invalid("replacement for %q: symbol %q is not defined in the patch", name, nsym.Name)
		}
		if s := o.Sections[nsym.Section]; s.Flags&elf.SHF_EXECINSTR == 0 || !s.Load {
			return invalid("replacement for %q: symbol %q is not in a loaded code section", name, nsym.Name)
		}
		if newR.Addend < 0 {
			return invalid("replacement for %q: negative addend", name)
		}
		key := fmt.Sprintf("%s/%d", name, pos)
		if seen[key] {
			return invalid("function %q (position %d) is replaced twice", name, pos)
		}
		seen[key] = true
		o.Funcs = append(o.Funcs, Func{New: SymRef{Sym: newR.Sym, Addend: newR.Addend}, OldName: name, OldPos: pos})
	}
	return nil
}

func (o *Object) readSyms() error {
	sec := o.section(SymsSection)
	if sec == nil {
		return nil
	}
	if len(sec.Data)%SymEntrySize != 0 {
		return invalid("section %s: size %d is not a multiple of %d", SymsSection, len(sec.Data), SymEntrySize)
	}
	for off := 0; off < len(sec.Data); off += SymEntrySize {
		r, ok := o.relocAt(sec, uint64(off))
		if !ok {
			return invalid("%s entry %d: name has no R_X86_64_64 relocation", SymsSection, off/SymEntrySize)
		}
		name, err := o.stringAt(r)
		if err != nil {
			return invalid("%s entry %d: %v", SymsSection, off/SymEntrySize, err)
		}
		tr, ok := o.relocAt(sec, uint64(off+8))
		if !ok {
			return invalid("%s entry for %q: target name has no R_X86_64_64 relocation", SymsSection, name)
		}
		target, err := o.stringAt(tr)
		if err != nil {
			return invalid("%s entry for %q: %v", SymsSection, name, err)
		}
		if _, dup := o.SymbolPos[name]; dup {
			return invalid("%s: symbol %q bound twice", SymsSection, name)
		}
		o.SymbolPos[name] = TargetSym{Name: target, Pos: binary.LittleEndian.Uint64(sec.Data[off+16:])}
	}
	return nil
}

func (o *Object) readBuildID() error {
	sec := o.section(BuildIDSection)
	if sec == nil {
		return nil
	}
	s := string(sec.Data)
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	id, err := hex.DecodeString(s)
	if err != nil || len(id) == 0 {
		return invalid("section %s: %q is not a hexadecimal build-id", BuildIDSection, s)
	}
	o.TargetBuildID = id
	return nil
}

// readVersion checks the format version. `ld -r` concatenates the version words of
// the objects it merges, so the section may hold several; they must agree.
func (o *Object) readVersion() error {
	sec := o.section(VersionSection)
	if sec == nil {
		return invalid("no %s section: the object is in format 1, which left the target's symbols to be found by name on the host; "+
			"rebuild it with this version's syscare build, or recompile a hand-written patch against its upatch.h", VersionSection)
	}
	if len(sec.Data) == 0 || len(sec.Data)%4 != 0 {
		return invalid("section %s: size %d is not a positive multiple of 4", VersionSection, len(sec.Data))
	}
	v := binary.LittleEndian.Uint32(sec.Data)
	for off := 4; off < len(sec.Data); off += 4 {
		if w := binary.LittleEndian.Uint32(sec.Data[off:]); w != v {
			return invalid("section %s: merged objects declare formats %d and %d", VersionSection, v, w)
		}
	}
	switch {
	case v > FormatVersion:
		return invalid("format %d is newer than this runtime reads (%d): update syscare", v, FormatVersion)
	case v < FormatVersion:
		return invalid("format %d is no longer read (this runtime reads %d): rebuild the patch", v, FormatVersion)
	}
	o.Version = v
	return nil
}

// readOffsets reads .upatch.offsets. Entries that `ld -r` merged from several
// translation units may repeat; a repeat must be identical.
func (o *Object) readOffsets() error {
	sec := o.section(OffsetsSection)
	if sec == nil {
		return nil
	}
	if len(sec.Data)%OffsetEntrySize != 0 {
		return invalid("section %s: size %d is not a multiple of %d", OffsetsSection, len(sec.Data), OffsetEntrySize)
	}
	o.Offsets = map[OffsetKey]Offset{}
	for at := 0; at < len(sec.Data); at += OffsetEntrySize {
		n := at / OffsetEntrySize
		r, ok := o.relocAt(sec, uint64(at))
		if !ok {
			return invalid("%s entry %d: name has no R_X86_64_64 relocation", OffsetsSection, n)
		}
		name, err := o.stringAt(r)
		if err != nil {
			return invalid("%s entry %d: %v", OffsetsSection, n, err)
		}
		e := sec.Data[at:]
		info := binary.LittleEndian.Uint64(e[40:])
		kind, typ := OffsetKind(info&0xff), elf.SymType(info>>8&0xff)
		if info>>16 != 0 {
			return invalid("%s entry for %q: reserved bits %#x set", OffsetsSection, name, info)
		}
		off := Offset{Value: binary.LittleEndian.Uint64(e[16:]), Size: binary.LittleEndian.Uint64(e[24:]),
			Room: binary.LittleEndian.Uint64(e[32:]), Type: typ}
		switch kind {
		case OffsetFunc:
			if typ != elf.STT_FUNC {
				return invalid("%s entry for function %q: symbol type %v, want STT_FUNC", OffsetsSection, name, typ)
			}
			if off.Room < off.Size {
				return invalid("%s entry for function %q: room %d is less than its size %d", OffsetsSection, name, off.Room, off.Size)
			}
		case OffsetSymbol:
			if off.Room != 0 {
				return invalid("%s entry for symbol %q: room %d set on a symbol that is not replaced", OffsetsSection, name, off.Room)
			}
		default:
			return invalid("%s entry for %q: unknown kind %d", OffsetsSection, name, kind)
		}
		if off.Value+off.Size < off.Value || off.Value+off.Room < off.Value {
			return invalid("%s entry for %q: offset %#x and size %d overflow", OffsetsSection, name, off.Value, max(off.Size, off.Room))
		}
		key := OffsetKey{Kind: kind, Name: name, Pos: binary.LittleEndian.Uint64(e[8:])}
		if prev, dup := o.Offsets[key]; dup && prev != off {
			return invalid("%s: %q (position %d) resolved twice, to %#x and %#x", OffsetsSection, name, key.Pos, prev.Value, off.Value)
		}
		o.Offsets[key] = off
	}
	for _, f := range o.Funcs {
		if _, ok := o.FuncOffset(f); !ok {
			return invalid("%s: no entry for the replaced function %q (position %d)", OffsetsSection, f.OldName, f.OldPos)
		}
	}
	return nil
}
