// Package unwind walks the call frames of a stopped thread with the DWARF call-frame
// information of the loaded ELF files (.eh_frame), so that the safety check of a hot
// patch sees the return addresses that are really on a stack instead of every word
// that looks like one. It reads nothing itself: the caller gives the parsed tables,
// where each file is loaded, and the stack's bytes.
package unwind

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// ErrNoInfo is wrapped when a frame cannot be unwound: no table covers its address,
// or its rules use what this unwinder does not evaluate (DWARF expressions).
var ErrNoInfo = errors.New("no usable call-frame information")

// Table is the call-frame information of one ELF file, at link-time addresses.
type Table struct {
	// MinVaddr is the lowest PT_LOAD address rounded down to a page, as the load
	// bias is computed from (the address where file offset 0 is mapped, minus it).
	MinVaddr uint64
	fdes     []fde
}

type cie struct {
	codeAlign uint64
	dataAlign int64
	raReg     uint64
	fdeEnc    byte
	hasAug    bool // "z": FDEs carry an augmentation data block
	signal    bool
	initial   []byte
}

type fde struct {
	lo, hi uint64
	cie    *cie
	insns  []byte
}

// Parse reads the .eh_frame section of f. A file without one has an empty table.
func Parse(f *elf.File) (*Table, error) {
	t := &Table{}
	first := true
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			if v := p.Vaddr &^ 4095; first || v < t.MinVaddr {
				t.MinVaddr, first = v, false
			}
		}
	}
	s := f.Section(".eh_frame")
	if s == nil || s.Type == elf.SHT_NOBITS {
		return t, nil
	}
	data, err := elfsafe.SectionData(s)
	if err != nil {
		return nil, fmt.Errorf("section .eh_frame: %w", err)
	}
	if err := t.parse(data, s.Addr); err != nil {
		return nil, fmt.Errorf("section .eh_frame: %w", err)
	}
	return t, nil
}

// Len is the number of function descriptions in the table.
func (t *Table) Len() int { return len(t.fdes) }

var le = binary.LittleEndian

// reader decodes the DWARF primitive forms from a byte slice; a read past the end
// sets err and returns zeros, so that a truncated table is one error, not a panic.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if n < 0 || r.off+n > len(r.b) {
		r.err = fmt.Errorf("truncated at offset %#x", r.off)
		return false
	}
	return true
}

func (r *reader) u8() byte {
	if !r.need(1) {
		return 0
	}
	r.off++
	return r.b[r.off-1]
}

func (r *reader) u16() uint64 {
	if !r.need(2) {
		return 0
	}
	r.off += 2
	return uint64(le.Uint16(r.b[r.off-2:]))
}

func (r *reader) u32() uint64 {
	if !r.need(4) {
		return 0
	}
	r.off += 4
	return uint64(le.Uint32(r.b[r.off-4:]))
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	r.off += 8
	return le.Uint64(r.b[r.off-8:])
}

func (r *reader) uleb() uint64 {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		c := r.u8()
		if r.err != nil {
			return 0
		}
		if shift < 64 {
			v |= uint64(c&0x7f) << shift
		}
		if c&0x80 == 0 {
			return v
		}
	}
}

func (r *reader) sleb() int64 {
	var v int64
	shift := uint(0)
	for {
		c := r.u8()
		if r.err != nil {
			return 0
		}
		if shift < 64 {
			v |= int64(c&0x7f) << shift
		}
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v
		}
	}
}

func (r *reader) cstring() string {
	start := r.off
	for r.off < len(r.b) && r.b[r.off] != 0 {
		r.off++
	}
	if !r.need(1) {
		return ""
	}
	r.off++
	return string(r.b[start : r.off-1])
}

// Pointer encodings (DW_EH_PE_*).
const (
	peAbsptr  = 0x00
	peULEB    = 0x01
	peUdata2  = 0x02
	peUdata4  = 0x03
	peUdata8  = 0x04
	peSLEB    = 0x09
	peSdata2  = 0x0a
	peSdata4  = 0x0b
	peSdata8  = 0x0c
	pePCRel   = 0x10
	peDataRel = 0x30
	peOmit    = 0xff
)

// pointer reads a pointer in encoding enc; base is the link-time address of b[0].
func (r *reader) pointer(enc byte, base uint64) (uint64, error) {
	if enc == peOmit {
		return 0, nil
	}
	at := base + uint64(r.off)
	var v uint64
	switch enc & 0x0f {
	case peAbsptr, peUdata8, peSdata8:
		v = r.u64()
	case peULEB:
		v = r.uleb()
	case peUdata2:
		v = r.u16()
	case peUdata4:
		v = r.u32()
	case peSLEB:
		v = uint64(r.sleb())
	case peSdata2:
		v = uint64(int64(int16(r.u16())))
	case peSdata4:
		v = uint64(int64(int32(r.u32())))
	default:
		return 0, fmt.Errorf("pointer encoding %#x", enc)
	}
	switch enc & 0x70 {
	case 0:
	case pePCRel:
		v += at
	default:
		return 0, fmt.Errorf("pointer encoding %#x (relative to a base the unwinder does not know)", enc)
	}
	if enc&0x80 != 0 {
		return 0, fmt.Errorf("indirect pointer encoding %#x", enc)
	}
	return v, r.err
}

func (t *Table) parse(data []byte, addr uint64) error {
	cies := map[int]*cie{}
	r := &reader{b: data}
	for r.off < len(data) {
		start := r.off
		length := r.u32()
		if r.err != nil {
			return r.err
		}
		if length == 0 {
			break // the terminator
		}
		if length == 0xffffffff {
			length = r.u64()
		}
		body := r.off
		if length > uint64(len(data)-body) {
			return fmt.Errorf("entry at %#x: length %d past the end", start, length)
		}
		end := body + int(length)
		id := r.u32()
		if id == 0 {
			c, err := parseCIE(&reader{b: data[:end], off: r.off}, addr)
			if err != nil {
				return fmt.Errorf("CIE at %#x: %w", start, err)
			}
			cies[start] = c
		} else {
			cieAt := body - int(id)
			c, ok := cies[cieAt]
			if !ok {
				var err error
				if cieAt < 0 || cieAt >= len(data) {
					return fmt.Errorf("FDE at %#x: CIE pointer out of range", start)
				}
				if c, err = t.cieAt(data, cieAt, addr); err != nil {
					return fmt.Errorf("FDE at %#x: %w", start, err)
				}
				cies[cieAt] = c
			}
			fr := &reader{b: data[:end], off: r.off}
			lo, err := fr.pointer(c.fdeEnc, addr)
			if err != nil {
				return fmt.Errorf("FDE at %#x: %w", start, err)
			}
			n, err := fr.pointer(c.fdeEnc&0x0f, addr)
			if err != nil {
				return fmt.Errorf("FDE at %#x: %w", start, err)
			}
			if c.hasAug {
				skip := fr.uleb()
				fr.off += int(min(skip, uint64(len(fr.b))))
			}
			if fr.err != nil || fr.off > end {
				return fmt.Errorf("FDE at %#x: truncated", start)
			}
			if n > 0 {
				t.fdes = append(t.fdes, fde{lo: lo, hi: lo + n, cie: c, insns: data[fr.off:end]})
			}
		}
		r.off = end
	}
	sort.Slice(t.fdes, func(i, j int) bool { return t.fdes[i].lo < t.fdes[j].lo })
	return nil
}

func (t *Table) cieAt(data []byte, at int, addr uint64) (*cie, error) {
	r := &reader{b: data, off: at}
	length := r.u32()
	if length == 0xffffffff {
		length = r.u64()
	}
	body := r.off
	if r.err != nil || length > uint64(len(data)-body) {
		return nil, errors.New("CIE truncated")
	}
	if r.u32() != 0 {
		return nil, errors.New("CIE pointer does not point to a CIE")
	}
	return parseCIE(&reader{b: data[:body+int(length)], off: r.off}, addr)
}

func parseCIE(r *reader, addr uint64) (*cie, error) {
	c := &cie{fdeEnc: peAbsptr}
	version := r.u8()
	if version != 1 && version != 3 {
		return nil, fmt.Errorf("version %d", version)
	}
	aug := r.cstring()
	c.codeAlign = r.uleb()
	c.dataAlign = r.sleb()
	if version == 1 {
		c.raReg = uint64(r.u8())
	} else {
		c.raReg = r.uleb()
	}
	c.hasAug = len(aug) > 0 && aug[0] == 'z'
	if c.hasAug {
		n := r.uleb()
		if r.err != nil || n > uint64(len(r.b)-r.off) {
			return nil, errors.New("augmentation data past the end")
		}
		augEnd := r.off + int(n)
		for _, ch := range aug[1:] {
			switch ch {
			case 'R':
				c.fdeEnc = r.u8()
			case 'L':
				r.u8()
			case 'P':
				enc := r.u8()
				if _, err := r.pointer(enc&^0x80, addr); err != nil {
					return nil, err
				}
			case 'S':
				c.signal = true
			default:
				// Unknown letters: their data ends at augEnd.
			}
		}
		r.off = augEnd
	} else if aug != "" {
		return nil, fmt.Errorf("augmentation %q", aug)
	}
	if r.err != nil {
		return nil, r.err
	}
	c.initial = r.b[r.off:]
	return c, nil
}

// find returns the description of the function holding pc (link-time address).
func (t *Table) find(pc uint64) *fde {
	i := sort.Search(len(t.fdes), func(i int) bool { return t.fdes[i].hi > pc })
	if i < len(t.fdes) && t.fdes[i].lo <= pc {
		return &t.fdes[i]
	}
	return nil
}
