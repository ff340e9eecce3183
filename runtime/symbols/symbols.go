// Package symbols reads what the loader needs from a target ELF (executable or shared library).
//
// It is pure: it reads files, never a process. Open parses the symbol tables once
// into compact arrays with a by-name index, so that resolving the undefined symbols
// of a patch is a few map look-ups; Cache shares one parse between every process
// that maps the same file.
package symbols

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// Sentinel errors of Lookup and LookupFunc.
var (
	// ErrNotFound: no symbol of that name (or not that many) is defined.
	ErrNotFound = errors.New("symbol not found")
	// ErrAmbiguous: several symbols share the name and no position was given.
	ErrAmbiguous = errors.New("ambiguous symbol")
	// ErrNotFunc: the symbol exists but cannot be replaced as a function.
	ErrNotFunc = errors.New("not a patchable function")
)

// Symbol is one defined symbol of the target, with its file (link-time) address.
// For STT_TLS symbols Value is the offset inside the file's TLS block.
type Symbol struct {
	Name    string
	Value   uint64
	Size    uint64
	Type    elf.SymType
	Bind    elf.SymBind
	Section elf.SectionIndex
}

// TLSInfo is the PT_TLS segment of a file: the template of its thread-local block.
type TLSInfo struct {
	Vaddr, Memsz, Filesz, Align uint64
}

// Segment is one PT_LOAD segment, at its link-time addresses.
type Segment struct {
	Vaddr, Memsz uint64
	Flags        elf.ProgFlag
}

// Covers tells whether [addr, addr+size) lies inside one loaded segment of e, an
// executable one when exec is set. A zero size asks for the one byte at addr.
func (e *ELF) Covers(addr, size uint64, exec bool) bool {
	size = max(size, 1)
	for _, s := range e.Loads {
		if exec && s.Flags&elf.PF_X == 0 {
			continue
		}
		if addr >= s.Vaddr && addr-s.Vaddr < s.Memsz && size <= s.Memsz-(addr-s.Vaddr) {
			return true
		}
	}
	return false
}

// Options tells Open where separate debuginfo files live.
type Options struct {
	// Root prefixes every debug directory ("" or "/" for the running system).
	Root string
	// DebugDirs are the debug roots searched (under Root), each holding a
	// .build-id/xx/rest.debug tree; nil means {"/usr/lib/debug"}.
	DebugDirs []string
}

// ELF is the parsed, immutable symbol view of one target file. It is safe for
// concurrent use.
type ELF struct {
	Path    string
	BuildID []byte
	Type    elf.Type // ET_EXEC or ET_DYN
	// MinVaddr is the lowest PT_LOAD p_vaddr rounded down to a page: the load bias
	// of a mapping is (address of the mapping of file offset 0) - MinVaddr.
	MinVaddr uint64
	// TLS is the PT_TLS segment, nil if the file has no thread-local storage.
	TLS *TLSInfo
	// Loads are the PT_LOAD segments: what the loader maps of the file.
	Loads []Segment
	// TLSModuleSlot is the link-time address of a GOT slot that the dynamic linker
	// fills with the file's own TLS module id (an R_X86_64_DTPMOD64 relocation
	// against the file itself or a symbol it defines); 0 if there is none.
	TLSModuleSlot uint64
	// DebugFile is the separate debuginfo file whose .symtab was used, "" if none.
	DebugFile string

	symtab table
	dynsym table
	// gotSlot maps a dynamic symbol name to its GOT slot (JUMP_SLOT, else GLOB_DAT).
	gotSlot map[string]uint64
	// plt maps a dynamic symbol name to the PLT entry that jumps through its slot.
	plt map[string]uint64
}

// table is one symbol table with a by-name index: head[base name] is the first
// symbol of that name in table order, next[i] the following one (-1 ends).
type table struct {
	syms []Symbol
	// hidden marks non-default symbol versions (name@VER in .symtab, or the
	// versym hidden bit in .dynsym): an unversioned reference never binds to them.
	hidden []bool
	head   map[string]int32
	next   []int32
}

// Len is the number of defined symbols in .symtab (0 when it is absent).
func (e *ELF) Len() int { return len(e.symtab.syms) }

// HasSymtab tells whether a full symbol table (from the file or its debuginfo) was found.
func (e *ELF) HasSymtab() bool { return len(e.symtab.syms) > 0 }

const pageSize = 4096

// Open reads the symbol view of the ELF file at path. When the file has no .symtab
// (stripped), the separate debuginfo file is looked up by build-id
// (<root><dir>/.build-id/xx/rest.debug for each debug dir), then by .gnu_debuglink.
// Fedora-style /usr/lib/debug/<path>-<v>-<r>.<arch>.debug files are found through
// the build-id symlink that debuginfo RPMs install.
func Open(path string, opts Options) (*ELF, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open ELF %q: %w", path, err)
	}
	defer f.Close()
	e := &ELF{Path: path}
	err = elfsafe.Guard(path, func() error { return e.read(f.File, opts) })
	if err != nil {
		return nil, fmt.Errorf("read ELF %q: %w", path, err)
	}
	return e, nil
}

func (e *ELF) read(f *elf.File, opts Options) error {
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("not an x86-64 ELF64 file (%v %v %v)", f.Class, f.Data, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %v is neither an executable nor a shared object", f.Type)
	}
	e.Type = f.Type
	first := true
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			e.Loads = append(e.Loads, Segment{Vaddr: p.Vaddr, Memsz: p.Memsz, Flags: p.Flags})
			if v := p.Vaddr &^ (pageSize - 1); first || v < e.MinVaddr {
				e.MinVaddr, first = v, false
			}
		case elf.PT_TLS:
			align := p.Align
			if align == 0 {
				align = 1
			}
			if align&(align-1) != 0 {
				return fmt.Errorf("PT_TLS alignment %d is not a power of two", p.Align)
			}
			e.TLS = &TLSInfo{Vaddr: p.Vaddr, Memsz: p.Memsz, Filesz: p.Filesz, Align: align}
		}
	}
	if first {
		return errors.New("no PT_LOAD segment")
	}
	id, err := elfsafe.BuildID(f)
	if err != nil {
		return err
	}
	e.BuildID = id

	if s := sectionOfType(f, elf.SHT_SYMTAB); s != nil {
		if e.symtab, err = readTable(f, s, nil); err != nil {
			return fmt.Errorf("section .symtab: %w", err)
		}
	}
	var dyn *elf.Section
	if dyn = sectionOfType(f, elf.SHT_DYNSYM); dyn != nil {
		var versym []byte
		if v := sectionOfType(f, elf.SHT_GNU_VERSYM); v != nil {
			if versym, err = elfsafe.SectionData(v); err != nil {
				return err
			}
		}
		if e.dynsym, err = readTable(f, dyn, versym); err != nil {
			return fmt.Errorf("section .dynsym: %w", err)
		}
		if err := e.readPLT(f, dyn); err != nil {
			return err
		}
	}
	if len(e.symtab.syms) == 0 {
		e.loadDebugInfo(f, opts)
	}
	return nil
}

func sectionOfType(f *elf.File, t elf.SectionType) *elf.Section {
	for _, s := range f.Sections {
		if s.Type == t {
			return s
		}
	}
	return nil
}

// loadDebugInfo fills the .symtab from a separate debuginfo file, if one is found
// and belongs to this file. A missing or foreign debug file is not an error: the
// caller then has .dynsym only, and Lookup of a static symbol says ErrNotFound.
func (e *ELF) loadDebugInfo(f *elf.File, opts Options) {
	for _, cand := range e.debugCandidates(f, opts) {
		df, err := elfsafe.Open(cand)
		if err != nil {
			continue
		}
		ok := elfsafe.Guard(cand, func() error {
			id, err := elfsafe.BuildID(df.File)
			if err != nil {
				return err
			}
			if e.BuildID != nil && !bytes.Equal(id, e.BuildID) {
				return errors.New("build-id differs")
			}
			s := sectionOfType(df.File, elf.SHT_SYMTAB)
			if s == nil {
				return errors.New("no .symtab")
			}
			t, err := readTable(df.File, s, nil)
			if err != nil {
				return err
			}
			e.symtab, e.DebugFile = t, cand
			return nil
		}) == nil
		df.Close()
		if ok {
			return
		}
	}
}

func (e *ELF) debugCandidates(f *elf.File, opts Options) []string {
	dirs := opts.DebugDirs
	if dirs == nil {
		dirs = []string{"/usr/lib/debug"}
	}
	root := strings.TrimSuffix(opts.Root, "/")
	var out []string
	if len(e.BuildID) >= 2 {
		hex := fmt.Sprintf("%x", e.BuildID)
		for _, d := range dirs {
			out = append(out, root+"/"+strings.Trim(d, "/")+"/.build-id/"+hex[:2]+"/"+hex[2:]+".debug")
		}
	}
	// .gnu_debuglink: only used when the build-id check above can confirm the
	// match, since a debuglink name alone says nothing about which build it is.
	if s := f.Section(".gnu_debuglink"); s != nil && e.BuildID != nil {
		if data, err := elfsafe.SectionData(s); err == nil {
			if i := bytes.IndexByte(data, 0); i > 0 {
				name := string(data[:i])
				if !strings.Contains(name, "/") {
					dir := e.Path[:strings.LastIndexByte(e.Path, '/')+1]
					out = append(out, dir+name, dir+".debug/"+name)
					for _, d := range dirs {
						out = append(out, root+"/"+strings.Trim(d, "/")+dir+name)
					}
				}
			}
		}
	}
	return out
}

// readTable parses a SHT_SYMTAB/SHT_DYNSYM section by hand: debug/elf allocates
// one string per symbol name, while slicing one string of the whole string table
// costs one allocation, which keeps a cold Open of libc cheap.
func readTable(f *elf.File, s *elf.Section, versym []byte) (table, error) {
	var t table
	if s.Entsize != 0 && s.Entsize != elf.Sym64Size {
		return t, fmt.Errorf("entry size %d, want %d", s.Entsize, elf.Sym64Size)
	}
	if int(s.Link) <= 0 || int(s.Link) >= len(f.Sections) {
		return t, fmt.Errorf("string table index %d out of range", s.Link)
	}
	data, err := elfsafe.SectionData(s)
	if err != nil {
		return t, err
	}
	strb, err := elfsafe.SectionData(f.Sections[s.Link])
	if err != nil {
		return t, err
	}
	strs := string(strb)
	n := len(data) / elf.Sym64Size
	if n == 0 {
		return t, nil
	}
	t.syms = make([]Symbol, 0, n)
	t.hidden = make([]bool, 0, n)
	for i := 1; i < n; i++ { // entry 0 is the null symbol
		b := data[i*elf.Sym64Size : (i+1)*elf.Sym64Size]
		shndx := elf.SectionIndex(binary.LittleEndian.Uint16(b[6:]))
		info := b[4]
		typ := elf.ST_TYPE(info)
		if shndx == elf.SHN_UNDEF || typ == elf.STT_SECTION || typ == elf.STT_FILE {
			continue
		}
		nameOff := binary.LittleEndian.Uint32(b[0:])
		name := cstring(strs, nameOff)
		if name == "" {
			continue
		}
		hidden := false
		if versym != nil {
			if 2*i+2 <= len(versym) {
				hidden = binary.LittleEndian.Uint16(versym[2*i:])&0x8000 != 0
			}
		} else if at := strings.IndexByte(name, '@'); at > 0 && !strings.HasPrefix(name[at:], "@@") {
			hidden = true
		}
		t.syms = append(t.syms, Symbol{
			Name:    name,
			Value:   binary.LittleEndian.Uint64(b[8:]),
			Size:    binary.LittleEndian.Uint64(b[16:]),
			Type:    typ,
			Bind:    elf.ST_BIND(info),
			Section: shndx,
		})
		t.hidden = append(t.hidden, hidden)
	}
	t.head = make(map[string]int32, len(t.syms))
	t.next = make([]int32, len(t.syms))
	for i := len(t.syms) - 1; i >= 0; i-- {
		key := baseName(t.syms[i].Name)
		if h, ok := t.head[key]; ok {
			t.next[i] = h
		} else {
			t.next[i] = -1
		}
		t.head[key] = int32(i)
	}
	return t, nil
}

// cstring returns the NUL-terminated string at off, "" when off is out of range.
func cstring(s string, off uint32) string {
	if int64(off) >= int64(len(s)) {
		return ""
	}
	s = s[off:]
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return s
}

// baseName strips a symbol version ("memcpy@@GLIBC_2.14" -> "memcpy").
func baseName(name string) string {
	if i := strings.IndexByte(name, '@'); i > 0 {
		return name[:i]
	}
	return name
}

// all returns the indices of the symbols answering to name, in table order: by
// base name, or by exact versioned name when name carries a version.
func (t *table) all(name string) []int32 {
	h, ok := t.head[baseName(name)]
	if !ok {
		return nil
	}
	exact := strings.IndexByte(name, '@') > 0
	var out []int32
	for i := h; i >= 0; i = t.next[i] {
		if exact && t.syms[i].Name != name {
			continue
		}
		out = append(out, i)
	}
	return out
}

func typed(s Symbol) bool {
	switch s.Type {
	case elf.STT_FUNC, elf.STT_OBJECT, elf.STT_TLS, elf.STT_GNU_IFUNC, elf.STT_COMMON:
		return true
	}
	return false
}

func isFunc(s Symbol) bool { return s.Type == elf.STT_FUNC || s.Type == elf.STT_GNU_IFUNC }

// pick applies the position rule to the candidates idx of table t.
func (t *table) pick(name string, pos uint64, idx []int32, what string) (Symbol, error) {
	if pos > 0 {
		if pos > uint64(len(idx)) {
			return Symbol{}, fmt.Errorf("%s %q at position %d: %w (%d defined)", what, name, pos, ErrNotFound, len(idx))
		}
		return t.syms[idx[pos-1]], nil
	}
	switch len(idx) {
	case 0:
		return Symbol{}, fmt.Errorf("%s %q: %w", what, name, ErrNotFound)
	case 1:
		return t.syms[idx[0]], nil
	}
	// Narrow down: default versions over hidden ones, typed over untyped
	// (assembler labels, linker-defined NOTYPE aliases).
	keep := func(f func(int32) bool) {
		var n []int32
		for _, i := range idx {
			if f(i) {
				n = append(n, i)
			}
		}
		if len(n) > 0 {
			idx = n
		}
	}
	keep(func(i int32) bool { return !t.hidden[i] })
	keep(func(i int32) bool { return typed(t.syms[i]) })
	// The same definition listed twice (e.g. an alias pair both named name) is not ambiguous.
	same := true
	for _, i := range idx[1:] {
		a, b := t.syms[i], t.syms[idx[0]]
		if a.Value != b.Value || a.Type != b.Type {
			same = false
		}
	}
	if len(idx) == 1 || same {
		return t.syms[idx[0]], nil
	}
	return Symbol{}, fmt.Errorf("%s %q: %w: %d symbols of that name, give a position", what, name, ErrAmbiguous, len(idx))
}

// Lookup finds the symbol name. pos 0: the name must be unique among the defined
// symbols of .symtab (default versions and FUNC/OBJECT/TLS symbols are preferred
// when that settles it); pos N >= 1: the N-th defined symbol of that name in
// .symtab order. When .symtab has no symbol of that name, .dynsym is searched the
// same way.
func (e *ELF) Lookup(name string, pos uint64) (Symbol, error) {
	if idx := e.symtab.all(name); len(idx) > 0 {
		return e.symtab.pick(name, pos, idx, "symbol")
	}
	return e.dynsym.pick(name, pos, e.dynsym.all(name), "symbol")
}

// LookupFunc is Lookup among function symbols: pos counts function symbols only
// (kpatch's sympos), and the result must be a plain STT_FUNC with a size, since
// the loader overwrites its first bytes with a jump. GNU indirect functions are
// refused: their symbol is the resolver, not the code that runs.
func (e *ELF) LookupFunc(name string, pos uint64) (Symbol, error) {
	t := &e.symtab
	idx := t.all(name)
	if len(idx) == 0 {
		t = &e.dynsym
		idx = t.all(name)
	}
	var funcs []int32
	for _, i := range idx {
		if isFunc(t.syms[i]) {
			funcs = append(funcs, i)
		}
	}
	if len(funcs) == 0 && len(idx) > 0 {
		s := t.syms[idx[0]]
		return Symbol{}, fmt.Errorf("function %q: %w: it is a %v symbol", name, ErrNotFunc, s.Type)
	}
	s, err := t.pick(name, pos, funcs, "function")
	if err != nil {
		return Symbol{}, err
	}
	if s.Type == elf.STT_GNU_IFUNC {
		return Symbol{}, fmt.Errorf("function %q: %w: it is a GNU indirect function (its symbol is the resolver); patch the implementation it selects instead", name, ErrNotFunc)
	}
	if s.Size == 0 {
		return Symbol{}, fmt.Errorf("function %q: %w: its symbol has size 0", name, ErrNotFunc)
	}
	if s.Section >= elf.SHN_LORESERVE {
		return Symbol{}, fmt.Errorf("function %q: %w: section index %#x", name, ErrNotFunc, uint16(s.Section))
	}
	return s, nil
}

// Dynamic returns the exported definition of name in .dynsym: global or weak,
// default visibility, and for versioned symbols the default version (the one an
// unversioned reference binds to: memcpy@@GLIBC_2.14, not memcpy@GLIBC_2.2.5).
func (e *ELF) Dynamic(name string) (Symbol, bool) {
	t := &e.dynsym
	var found Symbol
	ok := false
	for _, i := range t.all(name) {
		s := t.syms[i]
		if s.Bind != elf.STB_GLOBAL && s.Bind != elf.STB_WEAK && s.Bind != stbGNUUnique {
			continue
		}
		if t.hidden[i] {
			continue
		}
		if !ok || (found.Bind == elf.STB_WEAK && s.Bind != elf.STB_WEAK) {
			found, ok = s, true
		}
	}
	return found, ok
}

// Symbols calls fn for each defined symbol of .symtab (or .dynsym when there is
// no .symtab) in table order until fn returns false.
func (e *ELF) Symbols(fn func(Symbol) bool) {
	t := &e.symtab
	if len(t.syms) == 0 {
		t = &e.dynsym
	}
	for _, s := range t.syms {
		if !fn(s) {
			return
		}
	}
}

// PLT returns the file address of the PLT entry that calls name (in .plt,
// .plt.sec or .plt.got), if the file has one.
func (e *ELF) PLT(name string) (uint64, bool) {
	a, ok := e.plt[name]
	return a, ok
}

// GOT returns the file address of the GOT slot the dynamic linker fills with the
// address of name (its JUMP_SLOT, else GLOB_DAT relocation). Reading that slot in
// a process gives the address the process itself uses.
func (e *ELF) GOT(name string) (uint64, bool) {
	a, ok := e.gotSlot[name]
	return a, ok
}

// TLSBlockOffset returns how far below the thread pointer the executable's TLS
// block starts, for x86-64 (TLS variant II, TCB at the thread pointer).
//
// glibc's dynamic linker (_dl_determine_tlsoffset, elf/dl-tls.c) places the
// blocks of the initially loaded modules below the TCB in module order, and the
// executable is module 1, so its block is first:
//
//	firstbyte = -(p_vaddr mod p_align) mod p_align
//	offset    = roundup(p_memsz - firstbyte, p_align) + firstbyte
//	&var      = tp - offset + st_value
//
// Linkers align PT_TLS p_vaddr to p_align, so firstbyte is 0 in practice and the
// rule is roundup(p_memsz, p_align) — which is also what static executables use
// (__libc_setup_tls). Only valid for the main executable: shared libraries' blocks
// follow in load order, which depends on the process.
func (t *TLSInfo) BlockOffset() uint64 {
	align := t.Align
	if align == 0 {
		align = 1
	}
	firstbyte := -(t.Vaddr & (align - 1)) & (align - 1)
	return roundUp(t.Memsz-firstbyte, align) + firstbyte
}

func roundUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// TPOffset returns the %fs-relative offset (negative) of the TLS symbol s of the
// executable e, for TPOFF32 and GOTTPOFF.
func (e *ELF) TPOffset(s Symbol) (int64, error) {
	if e.TLS == nil {
		return 0, fmt.Errorf("TLS symbol %q: %q has no PT_TLS segment", s.Name, e.Path)
	}
	if s.Type != elf.STT_TLS {
		return 0, fmt.Errorf("symbol %q is a %v symbol, not thread-local", s.Name, s.Type)
	}
	if s.Value > e.TLS.Memsz {
		return 0, fmt.Errorf("TLS symbol %q: offset %#x outside the %#x-byte TLS block", s.Name, s.Value, e.TLS.Memsz)
	}
	off := e.TLS.BlockOffset()
	if off > 1<<31 {
		return 0, fmt.Errorf("TLS block of %d bytes is too large", off)
	}
	return int64(s.Value) - int64(off), nil
}

// stbGNUUnique is STB_GNU_UNIQUE (10), which debug/elf does not name.
const stbGNUUnique elf.SymBind = 10
