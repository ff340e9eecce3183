// Package layout places a parsed patch object (runtime/patchobj) at a chosen address and applies its relocations.
//
// It is pure: NewPlan decides, once per patch object, where every loaded section,
// GOT slot and trampoline goes relative to the load address; Link turns the plan
// into the exact bytes for one load address, asking a Resolver for the target's
// symbols. Neither touches a process, so both are unit-tested and fuzzed here.
//
// # Memory image
//
//	Base                       Text region, mapped r-x
//	  executable sections      (.text.*), in section-index order
//	  read-only sections       (.rodata.*, .rodata.str1.*, ...)
//	  GOT                      8-byte slots for GOTPCREL* (symbol address) and
//	                           GOTTPOFF (TLS offset) relocations; read-only once written
//	  trampolines              16-byte slots: jmp *0(%rip); .quad target
//	Base + TextSize            Data region, mapped rw-
//	  writable sections        (.data.*, .bss.*, .data.rel.ro.*)
//	  COMMON symbols
//
// # Thread-local storage
//
// A patch cannot add TLS variables, but it may read and write the executable's:
// R_X86_64_TPOFF32 receives the variable's %fs-relative offset and GOTTPOFF a GOT
// slot holding it, both from Resolver.TLSOffset (symbols.ELF.TPOffset computes it
// from PT_TLS with glibc's variant-II rule, see symbols.TLSInfo.BlockOffset).
//
// # Reach
//
// The loader allocates the image near the target ELF, but the libraries the patch
// calls may be more than 2 GiB away. A call or jump (R_X86_64_PLT32, or PC32 against
// a function) whose target is out of rel32 reach goes through a trampoline; any
// other reference out of reach is an error: the patch must be placed closer.
package layout

import (
	"debug/elf"
	"errors"
	"fmt"

	"github.com/syscare/syscare/runtime/patchobj"
)

// Resolver answers the symbols a patch leaves undefined.
type Resolver interface {
	// Resolve returns the absolute run-time address of an undefined symbol of the
	// patch (name and pos as given by patchobj.Object.Target), and whether it is a
	// function (so an out-of-reach call can go through a trampoline).
	Resolve(name string, pos uint64) (addr uint64, isFunc bool, err error)
	// TLSOffset returns the %fs-relative offset (negative on x86-64) of a TLS
	// variable of the executable, for TPOFF32/GOTTPOFF.
	TLSOffset(name string, pos uint64) (int64, error)
	// TLSModule returns the TLS module id of the ELF file that defines a TLS
	// variable, and the variable's offset in that module's block, for the dynamic
	// models (TLSGD, TLSLD, DTPOFF32/64) that code of a shared library uses: the
	// patch calls __tls_get_addr with them, as the library's own code does.
	TLSModule(name string, pos uint64) (module, offset uint64, err error)
}

// ErrNotFound may be wrapped by a Resolver error to say the symbol does not
// exist; a weak undefined symbol then resolves to 0, as with the static linker.
// Errors wrapping symbols.ErrNotFound are treated the same way.
var ErrNotFound = errors.New("symbol not found")

const (
	pageSize = 4096
	// maxImage bounds the image so that every patch-internal reference is in
	// rel32 reach and hostile section sizes cannot demand absurd allocations.
	maxImage = 256 << 20
	// TrampolineSize is the space of one trampoline: 14 bytes of code, padded.
	TrampolineSize = 16
	gotSlotSize    = 8
)

type region int8

const (
	regionNone region = iota
	regionText
	regionData
)

type slotKind int8

const (
	slotAddr  slotKind = iota // holds the symbol's address
	slotTPOff                 // holds the symbol's TLS offset
	// A tls_index pair {module, offset} for __tls_get_addr takes two slots, in this
	// order: for one variable (TLSGD), or with offset 0 for its module (TLSLD).
	slotGDModule
	slotGDOffset
	slotLDModule
	slotLDZero
)

type slotKey struct {
	kind slotKind
	sym  uint32
}

// Plan is the placement of one patch object relative to its load address.
type Plan struct {
	// TextSize and DataSize are the page-aligned sizes of the r-x region (code,
	// read-only data, GOT, trampolines) and of the rw- region that follows it.
	TextSize, DataSize uint64

	obj       *patchobj.Object
	secRegion []region
	secOff    []uint64          // offset of each section inside its region
	commonOff map[uint32]uint64 // COMMON symbol -> offset in the data region
	gotOff    uint64
	gotSlots  map[slotKey]int
	trampOff  uint64
	tramps    map[uint32]int // undefined symbol -> trampoline index
	// globals maps names of symbols defined in the patch, so that an undefined
	// reference of the same name binds to the patch's definition first.
	globals map[string]uint32
}

// NewPlan decides the placement of o's loaded sections and counts the GOT slots
// and trampolines its relocations may need.
func NewPlan(o *patchobj.Object) (*Plan, error) {
	if o == nil {
		return nil, errors.New("plan patch: no object")
	}
	p := &Plan{
		obj:       o,
		secRegion: make([]region, len(o.Sections)),
		secOff:    make([]uint64, len(o.Sections)),
		commonOff: map[uint32]uint64{},
		gotSlots:  map[slotKey]int{},
		tramps:    map[uint32]int{},
		globals:   map[string]uint32{},
	}
	var text, data uint64
	place := func(end *uint64, size, align uint64, what string) (uint64, error) {
		if align == 0 {
			align = 1
		}
		if align&(align-1) != 0 || align > pageSize {
			return 0, fmt.Errorf("plan patch: %s: alignment %d is not a power of two up to %d", what, align, pageSize)
		}
		if size > maxImage || *end > maxImage {
			return 0, fmt.Errorf("plan patch: %s: size %d exceeds the %d-byte limit of a patch", what, size, maxImage)
		}
		off := roundUp(*end, align)
		*end = off + size
		if *end > maxImage {
			return 0, fmt.Errorf("plan patch: %s: the patch exceeds %d bytes", what, maxImage)
		}
		return off, nil
	}
	// Code first, then read-only data: keeps the hot code together.
	for pass := 0; pass < 3; pass++ {
		for i, s := range o.Sections {
			if s == nil || !s.Load {
				continue
			}
			exec := s.Flags&elf.SHF_EXECINSTR != 0
			write := s.Flags&elf.SHF_WRITE != 0
			var r region
			switch {
			case pass == 0 && exec:
				r = regionText
			case pass == 1 && !exec && !write:
				r = regionText
			case pass == 2 && write && !exec:
				r = regionData
			default:
				continue
			}
			if exec && write {
				return nil, fmt.Errorf("plan patch: section %q is both writable and executable", s.Name)
			}
			if s.Type != elf.SHT_NOBITS && uint64(len(s.Data)) != s.Size {
				return nil, fmt.Errorf("plan patch: section %q: %d bytes of data for size %d", s.Name, len(s.Data), s.Size)
			}
			end := &text
			if r == regionData {
				end = &data
			}
			off, err := place(end, s.Size, s.Addralign, fmt.Sprintf("section %q", s.Name))
			if err != nil {
				return nil, err
			}
			p.secRegion[i], p.secOff[i] = r, off
		}
	}
	for i, sym := range o.Symbols {
		switch {
		case sym.Section == elf.SHN_COMMON:
			// For COMMON symbols st_value is the alignment.
			off, err := place(&data, sym.Size, sym.Value, fmt.Sprintf("common symbol %q", sym.Name))
			if err != nil {
				return nil, err
			}
			p.commonOff[uint32(i)] = off
		case sym.Defined() && sym.Name != "" && (sym.Bind == elf.STB_GLOBAL || sym.Bind == elf.STB_WEAK):
			if _, dup := p.globals[sym.Name]; !dup {
				p.globals[sym.Name] = uint32(i)
			}
		}
	}
	// GOT slots and trampolines, in relocation order so the layout is deterministic.
	var ntramp int
	for i, s := range o.Sections {
		if s == nil || p.secRegion[i] == regionNone {
			continue
		}
		for _, r := range s.Relocs {
			if int(r.Sym) >= len(o.Symbols) {
				return nil, fmt.Errorf("plan patch: section %q: relocation at %#x: symbol index %d out of range", s.Name, r.Offset, r.Sym)
			}
			switch r.Type {
			case elf.R_X86_64_GOTPCREL, elf.R_X86_64_GOTPCRELX, elf.R_X86_64_REX_GOTPCRELX:
				p.addSlot(slotKey{slotAddr, r.Sym})
			case elf.R_X86_64_GOTTPOFF:
				p.addSlot(slotKey{slotTPOff, r.Sym})
			case elf.R_X86_64_TLSGD:
				p.addSlot(slotKey{slotGDModule, r.Sym})
				p.addSlot(slotKey{slotGDOffset, r.Sym})
			case elf.R_X86_64_TLSLD:
				// One pair serves every variable of the target's module.
				p.addSlot(slotKey{slotLDModule, 0})
				p.addSlot(slotKey{slotLDZero, 0})
			case elf.R_X86_64_PC32, elf.R_X86_64_PLT32:
				if !o.Symbols[r.Sym].Defined() {
					if _, ok := p.tramps[r.Sym]; !ok {
						p.tramps[r.Sym] = ntramp
						ntramp++
					}
				}
			}
		}
	}
	var err error
	if p.gotOff, err = place(&text, uint64(len(p.gotSlots))*gotSlotSize, gotSlotSize, "GOT"); err != nil {
		return nil, err
	}
	if p.trampOff, err = place(&text, uint64(ntramp)*TrampolineSize, TrampolineSize, "trampolines"); err != nil {
		return nil, err
	}
	if text == 0 {
		return nil, errors.New("plan patch: no code to load")
	}
	p.TextSize = roundUp(text, pageSize)
	p.DataSize = roundUp(data, pageSize)
	if p.TextSize+p.DataSize > maxImage {
		return nil, fmt.Errorf("plan patch: %d bytes exceed the %d-byte limit of a patch", p.TextSize+p.DataSize, maxImage)
	}
	return p, nil
}

func (p *Plan) addSlot(k slotKey) {
	if _, ok := p.gotSlots[k]; !ok {
		p.gotSlots[k] = len(p.gotSlots)
	}
}

// GOTSlots and Trampolines are the numbers reserved by the plan.
func (p *Plan) GOTSlots() int    { return len(p.gotSlots) }
func (p *Plan) Trampolines() int { return len(p.tramps) }

// Size is TextSize + DataSize: the bytes to allocate.
func (p *Plan) Size() uint64 { return p.TextSize + p.DataSize }

func roundUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// Image is a patch object linked for one load address.
type Image struct {
	Base uint64
	// Text is mapped r-x at Base: code, read-only data, GOT, trampolines.
	Text []byte
	// Data is mapped rw- at Base+len(Text): .data, .bss, COMMON.
	Data []byte
	// DataInit is the length of the prefix of Data that holds initialised
	// bytes; the rest is .bss/COMMON, already zero in a fresh anonymous mapping,
	// so a loader may write only Data[:DataInit].
	DataInit int
	// Funcs has one entry per patchobj.Object.Funcs entry, in the same order.
	Funcs []FuncAddr
	// Sections lists where each loaded section went.
	Sections []PlacedSection
	// GOT and Trampolines are the addresses of those tables; TrampolinesUsed
	// counts the calls that needed one.
	GOT, Trampolines uint64
	TrampolinesUsed  int
}

// FuncAddr is the run-time address and size of one replacement function.
type FuncAddr struct {
	OldName string
	OldPos  uint64
	New     uint64
	NewSize uint64
}

// PlacedSection is the run-time address of one loaded section.
type PlacedSection struct {
	Index int
	Name  string
	Addr  uint64
	Size  uint64
}
