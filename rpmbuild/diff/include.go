package diff

import (
	"debug/elf"
	"errors"
	"fmt"
	"sort"

	"github.com/syscare/syscare/runtime/patchobj"
)

// include marks the sections the patch object carries: changed and new functions,
// new variables, new copies of changed read-only data, and whatever of the patched
// object they reference that the target cannot provide by name (strings, merged
// constants, jump tables, local read-only data).
func include(r *Result) error {
	p := r.patched
	var work []*section
	add := func(s *section) {
		if !s.include {
			s.include = true
			work = append(work, s)
		}
	}
	for _, s := range p.secs {
		if !s.interesting() || s.typ == elf.SHT_GROUP || isInitArray(s) || s.status == Same {
			continue
		}
		if s.exec() || s.status == New || readOnly(s) && !s.merge() {
			add(s)
		}
	}
	// closure adds what the sections in work reference, until nothing is left.
	closure := func() error {
		for len(work) > 0 {
			s := work[len(work)-1]
			work = work[:len(work)-1]
			for _, rl := range s.relas {
				if !patchobj.Supported[rl.typ] {
					// e.g. R_X86_64_TLSGD: -fPIC code reaching a thread-local variable
					return &UnpatchableError{Function: funcName(s), Section: s.name,
						Reason: fmt.Sprintf("relocation %v at %#x (symbol %s) is not supported by the patch loader", rl.typ, rl.off, rl.sym.name)}
				}
				t := rl.sym
				if t.sec == nil {
					continue
				}
				ts := t.sec
				if ts.include {
					continue
				}
				if ts.merge() || !ts.interesting() {
					add(ts)
					continue
				}
				y := t
				if t.typ == elf.STT_SECTION || !t.named() {
					y = ts.covering(p.targetOffset(s, rl))
				}
				switch {
				case y == nil && !readOnly(ts) && ts.twin != nil:
					return &UnpatchableError{Function: funcName(s), Section: ts.name,
						Reason: "reference to anonymous writable data of the original (no symbol names it)"}
				case y == nil, y.twin == nil, ts.status != Same:
					add(ts)
				case !ts.exec() && readOnly(ts) && !ts.tls() && y.bind == elf.STB_LOCAL:
					// Immutable: a private copy is as good as the original and needs no lookup.
					add(ts)
				}
			}
		}
		return nil
	}
	if err := closure(); err != nil {
		return err
	}
	// The table entries of the included code, and then what they reference (the
	// strings a BUG entry names, the replacement code of an alternative...).
	if err := carryTables(r, add); err != nil {
		return err
	}
	if err := closure(); err != nil {
		return err
	}
	for _, s := range p.secs {
		if s.include {
			r.Included = append(r.Included, s.name)
		}
	}
	sort.Strings(r.Included)
	return nil
}

// osym is a symbol of the emitted object.
type osym struct {
	name  string
	bind  elf.SymBind
	typ   elf.SymType
	shndx uint16
	value uint64
	size  uint64
	sec   *osec // defining section; nil for undefined and absolute symbols
	idx   int
}

type orela struct {
	off    uint64
	typ    elf.R_X86_64
	sym    *osym
	addend int64
}

type osec struct {
	name    string
	typ     elf.SectionType
	flags   elf.SectionFlag
	align   uint64
	entsize uint64
	size    uint64
	data    []byte
	link    uint32
	info    uint32
	relas   []orela
	secsym  *osym
	idx     int
}

type emitter struct {
	r       *Result
	secs    []*osec
	bySec   map[*section]*osec
	defined map[*symbol]*osym
	undef   map[string]*osym
	syms    []*osym // in creation order; sorted locals-first when written
	strs    *osec
	symsSec *osec
	funcs   *osec
	strOff  map[string]uint64
	aliases map[string]bool
	offs    *osec
	offKeys map[patchobj.OffsetKey]bool
}

func (e *emitter) newSym(y *osym) *osym {
	e.syms = append(e.syms, y)
	return y
}

// str puts a NUL-terminated string into .upatch.strings and returns its offset.
func (e *emitter) str(s string) uint64 {
	if off, ok := e.strOff[s]; ok {
		return off
	}
	off := uint64(len(e.strs.data))
	e.strs.data = append(append(e.strs.data, s...), 0)
	e.strs.size = uint64(len(e.strs.data))
	e.strOff[s] = off
	return off
}

func (e *emitter) pos(name string, isFunc bool) (uint64, error) {
	if e.r.opts.Locator == nil {
		return 0, nil
	}
	n, err := e.r.opts.Locator.Pos(name, e.r.orig.file, isFunc)
	if err != nil {
		return 0, fmt.Errorf("position of %s in the target: %w", name, err)
	}
	return n, nil
}

// ref returns the emitted symbol a relocation of the patched object must use, and the
// addend adjusted to it.
func (e *emitter) ref(s *section, rl rela) (*osym, int64, error) {
	p := e.r.patched
	t := rl.sym
	if t.sec == nil {
		if t.shndx == elf.SHN_ABS {
			return nil, 0, fmt.Errorf("section %s: relocation against absolute symbol %q", s.name, t.name)
		}
		if err := e.resolveSym(t.name, 0, nil); err != nil {
			return nil, 0, err
		}
		return e.undefined(t.name, t.bind, t.typ), rl.addend, nil
	}
	if t.sec.include {
		if t.named() && t.typ != elf.STT_NOTYPE {
			return e.defined[t], rl.addend, nil
		}
		return e.bySec[t.sec].secsym, int64(t.value) + rl.addend, nil
	}
	y := t
	if t.typ == elf.STT_SECTION || !t.named() {
		y = t.sec.covering(p.targetOffset(s, rl))
	}
	if y == nil || y.twin == nil {
		return nil, 0, fmt.Errorf("section %s: relocation at %#x reaches %s, which the patch does not carry", s.name, rl.off, t.sec.name)
	}
	add := int64(t.value) + rl.addend - int64(y.value)
	old := y.twin
	typ := elf.STT_NOTYPE
	if old.typ == elf.STT_TLS {
		typ = elf.STT_TLS // ld refuses TLS relocations against a non-TLS symbol
	}
	if old.bind != elf.STB_LOCAL {
		if err := e.resolveSym(old.name, 0, old); err != nil {
			return nil, 0, err
		}
		return e.undefined(old.name, old.bind, typ), add, nil
	}
	alias := e.r.aliasPrefix() + old.name
	if !e.aliases[alias] {
		e.aliases[alias] = true
		pos, err := e.pos(old.name, old.typ == elf.STT_FUNC)
		if err != nil {
			return nil, 0, err
		}
		e.addSymsEntry(alias, old.name, pos)
		if err := e.resolveSym(old.name, pos, old); err != nil {
			return nil, 0, err
		}
	}
	return e.undefined(alias, elf.STB_GLOBAL, typ), add, nil
}

func (e *emitter) undefined(name string, bind elf.SymBind, typ elf.SymType) *osym {
	if y := e.undef[name]; y != nil {
		return y
	}
	if bind == elf.STB_LOCAL {
		bind = elf.STB_GLOBAL
	}
	if typ != elf.STT_TLS {
		typ = elf.STT_NOTYPE
	}
	y := e.newSym(&osym{name: name, bind: bind, typ: typ})
	e.undef[name] = y
	return y
}

func (e *emitter) strRef(sec *osec, at uint64, s string) {
	sec.relas = append(sec.relas, orela{off: at, typ: elf.R_X86_64_64, sym: e.strs.secsym, addend: int64(e.str(s))})
}

func (e *emitter) addSymsEntry(alias, target string, pos uint64) {
	if e.symsSec == nil {
		e.symsSec = e.addSec(&osec{name: ".upatch.syms", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, align: 8})
	}
	at := uint64(len(e.symsSec.data))
	e.symsSec.data = append(e.symsSec.data, make([]byte, 24)...)
	le.PutUint64(e.symsSec.data[at+16:], pos)
	e.symsSec.size = uint64(len(e.symsSec.data))
	e.strRef(e.symsSec, at, alias)
	e.strRef(e.symsSec, at+8, target)
}

// resolveFunc records where the function old (of the original object) that the patch
// replaces lies in the target, after checking that the target's symbol is that
// function.
func (e *emitter) resolveFunc(old *symbol, pos uint64) error {
	if e.r.opts.Resolver == nil {
		return nil
	}
	off, err := e.locate(old.name, pos, old, true)
	if err != nil {
		return err
	}
	if off.Type != elf.STT_FUNC {
		return fmt.Errorf("replaced function %s: the target's symbol is %v, not a plain function", old.name, off.Type)
	}
	e.addOffset(patchobj.OffsetFunc, old.name, pos, off)
	return nil
}

// resolveSym records where the target symbol name (at pos, as .upatch.syms binds it)
// that the new code uses lies. old is its definition in the original object, nil when
// the original only references it. A name the target does not define is left to the
// loader, which finds it in the libraries of the process.
func (e *emitter) resolveSym(name string, pos uint64, old *symbol) error {
	if e.r.opts.Resolver == nil {
		return nil
	}
	if old == nil {
		off, ok, err := e.r.opts.Resolver.Global(name)
		if err != nil {
			return fmt.Errorf("symbol %s: %w", name, err)
		}
		if ok {
			off.Room = 0
			e.addOffset(patchobj.OffsetSymbol, name, pos, off)
		}
		return nil
	}
	off, err := e.locate(name, pos, old, old.typ == elf.STT_FUNC)
	if err != nil {
		return err
	}
	off.Room = 0
	e.addOffset(patchobj.OffsetSymbol, name, pos, off)
	return nil
}

// locate finds the target's definition of old, a symbol of the original object: by
// position for a local, as the linker bound it for a global. Its type must be old's,
// and for data its size too, else the debuginfo is not of the binary built from this
// object and an offset taken from it could point anywhere. A function's size is not
// compared: the builder compiles with -ffunction-sections, which turns a short jump
// to a function of the same section into a 5-byte one, so the shipped binary's copy
// may be a few bytes shorter than the original object's.
func (e *emitter) locate(name string, pos uint64, old *symbol, isFunc bool) (patchobj.Offset, error) {
	loc := e.r.opts.Resolver
	var off patchobj.Offset
	var err error
	if old.bind == elf.STB_LOCAL {
		off, err = loc.Symbol(name, pos, isFunc)
	} else {
		var ok bool
		off, ok, err = loc.Global(name)
		if err == nil && !ok {
			err = errors.New("not defined in the target (discarded when it was linked?)")
		}
	}
	if err != nil {
		return off, fmt.Errorf("symbol %s of %s: resolve in the target: %w", name, e.r.orig.file, err)
	}
	// A weak definition may have lost to another file's; a label has no size.
	if old.bind == elf.STB_WEAK || old.typ == elf.STT_NOTYPE {
		return off, nil
	}
	want := old.typ
	if want == elf.STT_COMMON {
		want = elf.STT_OBJECT
	}
	if off.Type != want && !(want == elf.STT_FUNC && off.Type == elf.STT_GNU_IFUNC) {
		return off, fmt.Errorf("symbol %s of %s: the target's debuginfo has a %v symbol, the original object a %v one: the debuginfo is not of this build",
			name, e.r.orig.file, off.Type, old.typ)
	}
	if off.Size != old.size && want != elf.STT_FUNC {
		return off, fmt.Errorf("symbol %s of %s: %d bytes in the target's debuginfo, %d in the original object: the debuginfo is not of this build",
			name, e.r.orig.file, off.Size, old.size)
	}
	return off, nil
}

// addOffset appends an entry to .upatch.offsets, once per target symbol.
func (e *emitter) addOffset(kind patchobj.OffsetKind, name string, pos uint64, off patchobj.Offset) {
	key := patchobj.OffsetKey{Kind: kind, Name: name, Pos: pos}
	if e.offKeys[key] {
		return
	}
	e.offKeys[key] = true
	if e.offs == nil {
		e.offs = e.addSec(&osec{name: patchobj.OffsetsSection, typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, align: 8})
	}
	at := uint64(len(e.offs.data))
	e.offs.data = append(e.offs.data, make([]byte, patchobj.OffsetEntrySize)...)
	b := e.offs.data[at:]
	le.PutUint64(b[8:], pos)
	le.PutUint64(b[16:], off.Value)
	le.PutUint64(b[24:], off.Size)
	le.PutUint64(b[32:], off.Room)
	le.PutUint64(b[40:], uint64(kind)|uint64(off.Type)<<8)
	e.offs.size = uint64(len(e.offs.data))
	e.strRef(e.offs, at, name)
}

func (e *emitter) addSec(s *osec) *osec {
	e.secs = append(e.secs, s)
	s.secsym = e.newSym(&osym{typ: elf.STT_SECTION, bind: elf.STB_LOCAL, sec: s})
	return s
}

func (r *Result) aliasPrefix() string {
	if r.opts.AliasPrefix != "" {
		return r.opts.AliasPrefix
	}
	h := uint32(2166136261)
	for _, c := range []byte(r.File) {
		h = (h ^ uint32(c)) * 16777619
	}
	return fmt.Sprintf("__upatch_%08x_", h)
}

// Object emits the patch object: an ET_REL file in the runtime/patchobj format.
func (r *Result) Object() ([]byte, error) {
	if r == nil || r.patched == nil {
		return nil, ErrNoChange
	}
	p := r.patched
	e := &emitter{r: r, bySec: map[*section]*osec{}, defined: map[*symbol]*osym{}, undef: map[string]*osym{},
		strOff: map[string]uint64{}, aliases: map[string]bool{}, offKeys: map[patchobj.OffsetKey]bool{}}
	e.newSym(&osym{name: r.File, typ: elf.STT_FILE, bind: elf.STB_LOCAL, shndx: uint16(elf.SHN_ABS)})
	for _, s := range p.secs {
		if !s.include {
			continue
		}
		os := e.addSec(&osec{name: s.name, typ: s.typ, flags: s.flags &^ elf.SHF_GROUP, align: s.align,
			entsize: s.entsize, size: s.size, data: s.data})
		e.bySec[s] = os
	}
	version := e.addSec(&osec{name: patchobj.VersionSection, typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, align: 4})
	version.data = le.AppendUint32(nil, patchobj.FormatVersion)
	version.size = uint64(len(version.data))
	e.funcs = e.addSec(&osec{name: ".upatch.funcs", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, align: 8})
	e.strs = e.addSec(&osec{name: ".upatch.strings", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, align: 1})
	// Defined symbols of the included sections keep their names and binding.
	for _, y := range p.syms {
		if y.sec == nil || !y.sec.include || !y.named() || y.typ == elf.STT_NOTYPE && y.bind == elf.STB_LOCAL {
			continue
		}
		e.defined[y] = e.newSym(&osym{name: y.name, bind: y.bind, typ: y.typ, value: y.value, size: y.size, sec: e.bySec[y.sec]})
	}
	for _, s := range p.secs {
		if !s.include {
			continue
		}
		os := e.bySec[s]
		for _, rl := range s.relas {
			y, add, err := e.ref(s, rl)
			if err != nil {
				return nil, err
			}
			os.relas = append(os.relas, orela{off: rl.off, typ: rl.typ, sym: y, addend: add})
		}
	}
	for _, s := range p.secs {
		if !s.include || !s.exec() || s.status != Changed {
			continue
		}
		f := s.primary()
		if f == nil || f.twin == nil || isCold(f.name) || f.typ != elf.STT_FUNC {
			continue
		}
		old := f.twin
		var pos uint64
		if old.bind == elf.STB_LOCAL {
			var err error
			if pos, err = e.pos(old.name, true); err != nil {
				return nil, err
			}
		}
		if err := e.resolveFunc(old, pos); err != nil {
			return nil, err
		}
		at := uint64(len(e.funcs.data))
		e.funcs.data = append(e.funcs.data, make([]byte, 32)...)
		le.PutUint64(e.funcs.data[at+16:], pos)
		e.funcs.relas = append(e.funcs.relas, orela{off: at, typ: elf.R_X86_64_64, sym: e.defined[f]})
		e.strRef(e.funcs, at+8, old.name)
	}
	e.funcs.size = uint64(len(e.funcs.data))
	e.addSec(&osec{name: ".note.GNU-stack", typ: elf.SHT_PROGBITS, align: 1})
	return e.write()
}
