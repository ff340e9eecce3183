package builder

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/arch/x86/x86asm"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// The cross-check compares two links of one shipped binary, made by the same recorded
// command from the original and from the patched objects, with --emit-relocs so that
// the relocations stay in the output. A function or data object is compared by its
// bytes with every relocated field cut out and replaced by what it refers to: a symbol
// (by name, local names qualified by their source file and with the compiler's
// numbering dropped) and an offset, or for anonymous read-only data (string literals,
// constants, jump tables) its content. So moving code or data around, as any change
// does, compares equal, while a changed instruction, a call to another function, or a
// changed constant the code reads does not.

// symKind tells functions from data objects.
type symKind int

const (
	kindFunc symKind = iota
	kindData
)

// linkedSym is one sized function or data object of a linked file.
type linkedSym struct {
	Name, File, Key string
	Kind            symKind
	Addr, Size      uint64
	// Writable: the object lives in a writable section (its value is process state).
	Writable bool
	sect     int
}

// linkedFile is a linked ELF read for the comparison.
type linkedFile struct {
	path  string
	f     *elf.File
	syms  []linkedSym // sorted by address
	all   []elf.Symbol
	file  []string // source file of each symbol of all ("" for globals)
	keys  []string // key of each symbol of all
	data  map[int][]byte
	relas map[int][]rela // target section index -> relocations sorted by offset
	// roHash caches the normalised content hash of read-only objects by index in syms.
	roHash map[int]string
}

type rela struct {
	off    uint64 // address of the field
	typ    elf.R_X86_64
	sym    uint32
	addend int64
}

// normName drops the numbers GCC appends to local and cloned names (counter.2,
// foo.constprop.0, foo.part.1.cold): they change with unrelated edits of the file.
func normName(n string) string {
	parts := strings.Split(n, ".")
	out := parts[:1]
	for _, p := range parts[1:] {
		if _, err := strconv.Atoi(p); err == nil {
			continue
		}
		out = append(out, p)
	}
	return strings.Join(out, ".")
}

func openLinked(path string) (*linkedFile, error) {
	ef, err := elfsafe.Open(path)
	if err != nil {
		return nil, err
	}
	f := ef.File
	if f.Machine != elf.EM_X86_64 {
		ef.Close()
		return nil, fmt.Errorf("%s: machine %v: only x86-64 is compared", path, f.Machine)
	}
	syms, err := elfsafe.Symbols(f)
	if err != nil {
		ef.Close()
		return nil, fmt.Errorf("symbols of %s: %w", path, err)
	}
	l := &linkedFile{path: path, f: f, all: syms, data: map[int][]byte{}, relas: map[int][]rela{}, roHash: map[int]string{}}
	l.file = make([]string, len(syms))
	l.keys = make([]string, len(syms))
	cur := ""
	seen := map[string]int{}
	for i, s := range syms {
		typ, bind := elf.ST_TYPE(s.Info), elf.ST_BIND(s.Info)
		if typ == elf.STT_FILE {
			cur = s.Name
			continue
		}
		key := normName(s.Name)
		if bind == elf.STB_LOCAL {
			l.file[i] = cur
			key = cur + "::" + key
		}
		// Two locals of one name in one file (static locals of two functions) are told
		// apart by their order, which a recompile keeps.
		if n := seen[key]; n > 0 {
			seen[key] = n + 1
			key = fmt.Sprintf("%s#%d", key, n)
		} else {
			seen[key] = 1
		}
		l.keys[i] = key
		if s.Section == elf.SHN_UNDEF || s.Section >= elf.SHN_LORESERVE || s.Name == "" {
			continue
		}
		var kind symKind
		switch typ {
		case elf.STT_FUNC, elf.STT_GNU_IFUNC:
			kind = kindFunc
		case elf.STT_OBJECT, elf.STT_TLS:
			kind = kindData
		default:
			continue
		}
		if s.Size == 0 || int(s.Section) >= len(f.Sections) {
			continue
		}
		sec := f.Sections[s.Section]
		l.syms = append(l.syms, linkedSym{Name: s.Name, File: l.file[i], Key: key, Kind: kind, Addr: s.Value, Size: s.Size,
			Writable: sec.Flags&elf.SHF_WRITE != 0, sect: int(s.Section)})
	}
	sort.SliceStable(l.syms, func(i, j int) bool { return l.syms[i].Addr < l.syms[j].Addr })
	for _, s := range f.Sections {
		if s.Type != elf.SHT_RELA || int(s.Info) >= len(f.Sections) || s.Info == 0 {
			continue
		}
		target := f.Sections[s.Info]
		if target.Flags&elf.SHF_ALLOC == 0 {
			continue
		}
		raw, err := s.Data()
		if err != nil {
			ef.Close()
			return nil, fmt.Errorf("%s: section %s: %w", path, s.Name, err)
		}
		var rs []rela
		for o := 0; o+24 <= len(raw); o += 24 {
			info := binary.LittleEndian.Uint64(raw[o+8:])
			rs = append(rs, rela{off: binary.LittleEndian.Uint64(raw[o:]), typ: elf.R_X86_64(info & 0xffffffff),
				sym: uint32(info >> 32), addend: int64(binary.LittleEndian.Uint64(raw[o+16:]))})
		}
		sort.Slice(rs, func(i, j int) bool { return rs[i].off < rs[j].off })
		l.relas[int(s.Info)] = append(l.relas[int(s.Info)], rs...)
	}
	return l, nil
}

func (l *linkedFile) Close() { l.f.Close() }

// bytesAt returns the file content of section i from address addr, n bytes (fewer at the
// section's end; zeros for NOBITS).
func (l *linkedFile) bytesAt(i int, addr, n uint64) []byte {
	s := l.f.Sections[i]
	if addr < s.Addr || addr >= s.Addr+s.Size {
		return nil
	}
	if addr+n > s.Addr+s.Size {
		n = s.Addr + s.Size - addr
	}
	if s.Type == elf.SHT_NOBITS {
		return make([]byte, n)
	}
	d, ok := l.data[i]
	if !ok {
		d, _ = s.Data()
		l.data[i] = d
	}
	lo := addr - s.Addr
	if lo+n > uint64(len(d)) {
		return nil
	}
	return d[lo : lo+n]
}

// sectionOf returns the allocated section holding addr, or -1.
func (l *linkedFile) sectionOf(addr uint64) int {
	for i, s := range l.f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && s.Size > 0 && addr >= s.Addr && addr < s.Addr+s.Size && s.Type != elf.SHT_NULL {
			return i
		}
	}
	return -1
}

// symAt returns the index in syms of the object or function holding addr, or -1.
func (l *linkedFile) symAt(addr uint64) int {
	i := sort.Search(len(l.syms), func(i int) bool { return l.syms[i].Addr > addr }) - 1
	// Aliases and the odd overlap: look a few symbols back, not just one.
	for n := 0; i >= 0 && n < 8; i, n = i-1, n+1 {
		if s := l.syms[i]; addr >= s.Addr && addr < s.Addr+s.Size {
			return i
		}
	}
	return -1
}

func relocSize(t elf.R_X86_64) int {
	switch t {
	case elf.R_X86_64_NONE:
		return 0
	case elf.R_X86_64_64, elf.R_X86_64_PC64, elf.R_X86_64_GOTOFF64, elf.R_X86_64_GOTPC64, elf.R_X86_64_SIZE64,
		elf.R_X86_64_DTPOFF64, elf.R_X86_64_TPOFF64, elf.R_X86_64_DTPMOD64, elf.R_X86_64_GOT64, elf.R_X86_64_GOTPCREL64, elf.R_X86_64_PLTOFF64:
		return 8
	case elf.R_X86_64_8, elf.R_X86_64_PC8:
		return 1
	case elf.R_X86_64_16, elf.R_X86_64_PC16:
		return 2
	}
	return 4
}

func pcRelative(t elf.R_X86_64) bool {
	switch t {
	case elf.R_X86_64_PC32, elf.R_X86_64_PLT32, elf.R_X86_64_GOTPCREL, elf.R_X86_64_GOTPCRELX,
		elf.R_X86_64_REX_GOTPCRELX, elf.R_X86_64_GOTPC32, elf.R_X86_64_PC64, elf.R_X86_64_PC16, elf.R_X86_64_PC8:
		return true
	}
	return false
}

func tlsReloc(t elf.R_X86_64) bool {
	switch t {
	case elf.R_X86_64_TPOFF32, elf.R_X86_64_TPOFF64, elf.R_X86_64_GOTTPOFF, elf.R_X86_64_TLSGD, elf.R_X86_64_TLSLD,
		elf.R_X86_64_DTPOFF32, elf.R_X86_64_DTPOFF64, elf.R_X86_64_GOTPC32_TLSDESC, elf.R_X86_64_TLSDESC_CALL:
		return true
	}
	return false
}

// normalized returns the bytes of syms[i] with each relocated field zeroed, followed by
// a description of what each field refers to.
func (l *linkedFile) normalized(i int) []byte {
	s := l.syms[i]
	code := l.bytesAt(s.sect, s.Addr, s.Size)
	out := append([]byte(nil), code...)
	var desc bytes.Buffer
	var insns map[uint64]fieldInsn // PC-relative field address -> its instruction (functions)
	rs := l.relas[s.sect]
	j := sort.Search(len(rs), func(j int) bool { return rs[j].off >= s.Addr })
	for ; j < len(rs) && rs[j].off < s.Addr+s.Size; j++ {
		r := rs[j]
		lo := r.off - s.Addr
		for k := lo; k < lo+uint64(relocSize(r.typ)) && k < uint64(len(out)); k++ {
			out[k] = 0
		}
		var insn *fieldInsn
		end := r.off + uint64(relocSize(r.typ))
		if s.Kind == kindFunc && pcRelative(r.typ) {
			if insns == nil {
				insns = decodeFields(code, s.Addr)
			}
			if fi, ok := insns[r.off]; ok {
				end, insn = fi.end, &fi
			}
		}
		fmt.Fprintf(&desc, "@%d:%d:%s;", lo, r.typ, l.target(r, end, insn))
	}
	return append(out, desc.Bytes()...)
}

// fieldInsn is what the comparison needs of an instruction with a PC-relative field.
type fieldInsn struct {
	end uint64 // address of the next instruction: the CPU adds the field to it
	// load: the instruction reads memory there (not an address taken with lea, not a
	// branch), bytes wide.
	load  bool
	bytes int
}

// decodeFields decodes a function from its start and maps the address of each
// PC-relative field to its instruction.
func decodeFields(code []byte, base uint64) map[uint64]fieldInsn {
	m := map[uint64]fieldInsn{}
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil || inst.Len == 0 {
			off++
			continue
		}
		if inst.PCRel > 0 {
			fi := fieldInsn{end: base + uint64(off+inst.Len)}
			for _, a := range inst.Args {
				if mem, ok := a.(x86asm.Mem); ok && mem.Base == x86asm.RIP && inst.Op != x86asm.LEA {
					fi.load, fi.bytes = true, inst.MemBytes
				}
			}
			m[base+uint64(off+inst.PCRelOff)] = fi
		}
		off += inst.Len
	}
	return m
}

// target describes what relocation r refers to. end is the end of the instruction
// holding a PC-relative field (the CPU's base for it); insn is that instruction.
func (l *linkedFile) target(r rela, end uint64, insn *fieldInsn) string {
	if int(r.sym) == 0 || int(r.sym) > len(l.all) {
		return fmt.Sprintf("abs%+d", r.addend)
	}
	s := l.all[r.sym-1]
	typ := elf.ST_TYPE(s.Info)
	if s.Section == elf.SHN_UNDEF || tlsReloc(r.typ) || (typ != elf.STT_SECTION && s.Section >= elf.SHN_LORESERVE) {
		return fmt.Sprintf("%s%+d", l.keys[r.sym-1], r.addend)
	}
	addr := s.Value + uint64(r.addend)
	if pcRelative(r.typ) {
		addr += end - r.off
	}
	if i := l.symAt(addr); i >= 0 {
		t := l.syms[i]
		d := fmt.Sprintf("%s+%d", t.Key, addr-t.Addr)
		if t.Kind == kindData && !t.Writable {
			// A constant the code reads: its value is part of what the code does.
			d += "=" + l.constHash(i)
		}
		return d
	}
	sec := l.sectionOf(addr)
	if sec < 0 {
		return fmt.Sprintf("addr:%s", l.keys[r.sym-1])
	}
	sh := l.f.Sections[sec]
	if sh.Flags&elf.SHF_WRITE != 0 {
		return fmt.Sprintf("%s+%d", sh.Name, addr-sh.Addr)
	}
	return sh.Name + "=" + l.anonContent(sec, addr, insn)
}

// constHash is the hash of a read-only object's normalised content.
func (l *linkedFile) constHash(i int) string {
	if h, ok := l.roHash[i]; ok {
		return h
	}
	l.roHash[i] = "cycle"
	s := l.syms[i]
	// Relocations inside are described by name only (no content), which ends recursion.
	data := append([]byte(nil), l.bytesAt(s.sect, s.Addr, s.Size)...)
	rs := l.relas[s.sect]
	var desc strings.Builder
	for j := sort.Search(len(rs), func(j int) bool { return rs[j].off >= s.Addr }); j < len(rs) && rs[j].off < s.Addr+s.Size; j++ {
		r := rs[j]
		for k := r.off - s.Addr; k < r.off-s.Addr+uint64(relocSize(r.typ)) && k < uint64(len(data)); k++ {
			data[k] = 0
		}
		fmt.Fprintf(&desc, "%d:%s;", r.off-s.Addr, l.shallowTarget(r))
	}
	sum := sha256.Sum256(append(data, desc.String()...))
	h := fmt.Sprintf("%x", sum[:8])
	l.roHash[i] = h
	return h
}

// shallowTarget names a relocation's target without looking at content.
func (l *linkedFile) shallowTarget(r rela) string {
	if int(r.sym) == 0 || int(r.sym) > len(l.all) {
		return fmt.Sprintf("abs%+d", r.addend)
	}
	s := l.all[r.sym-1]
	if elf.ST_TYPE(s.Info) != elf.STT_SECTION || s.Section == elf.SHN_UNDEF {
		return fmt.Sprintf("%s%+d", l.keys[r.sym-1], r.addend)
	}
	addr := s.Value + uint64(r.addend)
	if i := l.symAt(addr); i >= 0 {
		return fmt.Sprintf("%s+%d", l.syms[i].Key, addr-l.syms[i].Addr)
	}
	return "anon"
}

// anonContent describes unnamed read-only data at addr: a constant an instruction
// reads by as many bytes as it reads; a table of addresses (a switch's jump table) by
// where its entries lead; a string literal by its text; anything else by 16 bytes with
// relocated fields named.
func (l *linkedFile) anonContent(sec int, addr uint64, insn *fieldInsn) string {
	if insn != nil && insn.load && insn.bytes > 0 {
		return fmt.Sprintf("%x", l.bytesAt(sec, addr, uint64(insn.bytes)))
	}
	rs := l.relas[sec]
	j := sort.Search(len(rs), func(j int) bool { return rs[j].off >= addr })
	if j < len(rs) && rs[j].off == addr {
		return "table:" + l.table(rs[j:], addr)
	}
	if b := l.bytesAt(sec, addr, 4096); len(b) > 0 {
		n := bytes.IndexByte(b, 0)
		// A string has no relocated field in it (a table does).
		if n > 0 && (j == len(rs) || rs[j].off > addr+uint64(n)) && utf8.Valid(b[:n]) && printable(b[:n]) {
			return strconv.Quote(string(b[:n]))
		}
	}
	win := append([]byte(nil), l.bytesAt(sec, addr, 16)...)
	var desc strings.Builder
	for j := sort.Search(len(rs), func(j int) bool { return rs[j].off+8 > addr }); j < len(rs) && rs[j].off < addr+uint64(len(win)); j++ {
		r := rs[j]
		for k := int64(r.off) - int64(addr); k < int64(r.off)-int64(addr)+int64(relocSize(r.typ)); k++ {
			if k >= 0 && k < int64(len(win)) {
				win[k] = 0
			}
		}
		fmt.Fprintf(&desc, "%d:%s;", int64(r.off)-int64(addr), l.shallowTarget(r))
	}
	return fmt.Sprintf("%x%s", win, desc.String())
}

// table describes the adjacent relocated fields from base (rs starts at base) that
// lead into one function: a jump table, absolute (.quad .L5) or relative to its base
// (.long .L5-.L4, a PC-relative relocation whose addend carries the entry's distance
// from the base). It stops at the first entry leading elsewhere: the next table.
func (l *linkedFile) table(rs []rela, base uint64) string {
	var b strings.Builder
	owner := -2
	next := base
	for _, r := range rs {
		if r.off != next || int(r.sym) == 0 || int(r.sym) > len(l.all) {
			break
		}
		s := l.all[r.sym-1]
		if s.Section == elf.SHN_UNDEF {
			break
		}
		t := s.Value + uint64(r.addend)
		if pcRelative(r.typ) {
			t -= r.off - base
		}
		i := l.symAt(t)
		if owner == -2 {
			owner = i
		}
		if i != owner || i < 0 {
			break
		}
		fmt.Fprintf(&b, "%s+%d,", l.syms[i].Key, t-l.syms[i].Addr)
		next += uint64(relocSize(r.typ))
	}
	return b.String()
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

// binDiff is how the patched link of a binary differs from the original one.
type binDiff struct {
	// Changed, New and Removed are functions; ChangedData are writable data objects
	// whose initial content differs. Each is "name" or "name (file)" for a local.
	Changed, New, Removed, ChangedData []linkedSym
	// Same counts the functions that compare equal.
	Same int
}

// compareLinked compares two links of one binary (both made with --emit-relocs).
func compareLinked(origPath, patchedPath string) (*binDiff, error) {
	o, err := openLinked(origPath)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	p, err := openLinked(patchedPath)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	index := func(l *linkedFile) map[string]int {
		m := map[string]int{}
		for i, s := range l.syms {
			m[s.Key] = i
		}
		return m
	}
	oi, pi := index(o), index(p)
	d := &binDiff{}
	for i, s := range o.syms {
		j, ok := pi[s.Key]
		switch {
		case !ok && s.Kind == kindFunc:
			d.Removed = append(d.Removed, s)
		case !ok:
		case s.Kind == kindFunc:
			if bytes.Equal(o.normalized(i), p.normalized(j)) {
				d.Same++
			} else {
				d.Changed = append(d.Changed, p.syms[j])
			}
		case s.Writable:
			// Read-only data is compared where code reads it (constHash); writable data
			// is process state that a patch cannot change.
			if s.Size != p.syms[j].Size || !bytes.Equal(o.normalized(i), p.normalized(j)) {
				d.ChangedData = append(d.ChangedData, p.syms[j])
			}
		}
	}
	for _, s := range p.syms {
		if _, ok := oi[s.Key]; !ok && s.Kind == kindFunc {
			d.New = append(d.New, s)
		}
	}
	return d, nil
}

// label names a symbol for a message: "name" or "name (file)" for a local.
func (s linkedSym) label() string {
	if s.File != "" {
		return fmt.Sprintf("%s (%s)", s.Name, s.File)
	}
	return s.Name
}
