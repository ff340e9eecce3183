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
	"sync"

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
	// Loads are the file's PT_LOAD segments, to tell where a mapping of the file at
	// some file offset puts its link-time addresses (Bias).
	Loads []Load
	// fdes is the whole table, read when the file has no usable .eh_frame_hdr.
	fdes []fde
	// With .eh_frame_hdr, its sorted search table (8-byte entries of two offsets from
	// hdrAddr) finds a function's FDE, which is read only then: most files of a
	// process are never looked at.
	index     []byte
	hdrAddr   uint64
	frame     []byte
	frameAddr uint64
	// read keeps the FDEs read through the index, by offset: the threads of a process
	// mostly sit in the same few functions, and a check runs while they are stopped.
	read sync.Map
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

// Load is one PT_LOAD segment.
type Load struct {
	Offset, Vaddr, Filesz uint64
}

// addLoad records a PT_LOAD segment and keeps MinVaddr the lowest one's page.
func (t *Table) addLoad(l Load) {
	if v := l.Vaddr &^ 4095; len(t.Loads) == 0 || v < t.MinVaddr {
		t.MinVaddr = v
	}
	t.Loads = append(t.Loads, l)
}

// Bias returns the load bias (run-time minus link-time address) of a mapping of the
// file at run-time address start that maps file offset off (both page aligned, as in
// /proc/PID/maps), from the PT_LOAD segment that holds off; false if none does.
func (t *Table) Bias(start, off uint64) (uint64, bool) {
	for _, l := range t.Loads {
		lo := l.Offset &^ 4095
		if off >= lo && off < l.Offset+l.Filesz {
			return start - (l.Vaddr - l.Offset + off), true
		}
	}
	return 0, false
}

// Parse reads the .eh_frame section of f. A file without one has an empty table.
func Parse(f *elf.File) (*Table, error) {
	return parse(f, nil)
}

// ParseImage is Parse for a file whose bytes are all in image (f was read from it):
// the table refers to image instead of copies of its sections, so a file mapped into
// memory is read only where a lookup goes.
func ParseImage(f *elf.File, image []byte) (*Table, error) {
	if image == nil {
		image = []byte{}
	}
	return parse(f, image)
}

func parse(f *elf.File, image []byte) (*Table, error) {
	t := &Table{}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			t.addLoad(Load{Offset: p.Off, Vaddr: p.Vaddr, Filesz: p.Filesz})
		}
	}
	s := f.Section(".eh_frame")
	if s == nil || s.Type == elf.SHT_NOBITS {
		return t, nil
	}
	data, err := sectionBytes(s, image)
	if err != nil {
		return nil, fmt.Errorf("section .eh_frame: %w", err)
	}
	if h := f.Section(".eh_frame_hdr"); h != nil && h.Type != elf.SHT_NOBITS {
		if hb, err := sectionBytes(h, image); err == nil && t.useIndex(hb, h.Addr, data, s.Addr) {
			return t, nil
		}
	}
	if err := t.parse(data, s.Addr); err != nil {
		return nil, fmt.Errorf("section .eh_frame: %w", err)
	}
	return t, nil
}

// sectionBytes returns the contents of s: a slice of image when there is one, else
// a copy read from the file.
func sectionBytes(s *elf.Section, image []byte) ([]byte, error) {
	if image == nil {
		return elfsafe.SectionData(s)
	}
	if s.Flags&elf.SHF_COMPRESSED != 0 || s.Offset > uint64(len(image)) || s.Size > uint64(len(image))-s.Offset {
		return nil, fmt.Errorf("%d bytes at offset %#x: past the end of the file (%d bytes) or compressed", s.Size, s.Offset, len(image))
	}
	return image[s.Offset : s.Offset+s.Size : s.Offset+s.Size], nil
}

// tableEnc is the encoding of .eh_frame_hdr search tables that linkers write:
// signed 4-byte offsets from the start of .eh_frame_hdr.
const tableEnc = peDataRel | peSdata4

// useIndex takes the search table of .eh_frame_hdr (hdr at hdrAddr) when it has the
// usual form; false means the caller reads all of .eh_frame instead.
func (t *Table) useIndex(hdr []byte, hdrAddr uint64, frame []byte, frameAddr uint64) bool {
	r := &reader{b: hdr}
	version, ptrEnc, countEnc, enc := r.u8(), r.u8(), r.u8(), r.u8()
	if r.err != nil || version != 1 || enc != tableEnc {
		return false
	}
	if _, err := r.pointer(ptrEnc, hdrAddr); err != nil {
		return false
	}
	n, err := r.pointer(countEnc, hdrAddr)
	if err != nil || n == 0 || n > uint64(len(hdr)-r.off)/8 {
		return false
	}
	t.index = hdr[r.off : r.off+int(n)*8]
	t.hdrAddr, t.frame, t.frameAddr = hdrAddr, frame, frameAddr
	return true
}

// Len is the number of function descriptions in the table.
func (t *Table) Len() int {
	if t.index != nil {
		return len(t.index) / 8
	}
	return len(t.fdes)
}

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

// entry reads the length and id of the .eh_frame entry at start: the offsets of its
// body and end, and its id (0 for a CIE, else the distance back to its CIE).
func entry(data []byte, start int) (body, end int, id uint64, err error) {
	r := &reader{b: data, off: start}
	length := r.u32()
	if length == 0xffffffff {
		length = r.u64()
	}
	body = r.off
	if r.err != nil {
		return 0, 0, 0, r.err
	}
	if length > uint64(len(data)-body) {
		return 0, 0, 0, fmt.Errorf("entry at %#x: length %d past the end", start, length)
	}
	end = body + int(length)
	if length == 0 {
		return body, end, 0, nil // the terminator
	}
	id = r.u32()
	return body, end, id, r.err
}

// cieAt parses the CIE at offset at of data (.eh_frame at link-time address addr).
func cieAt(data []byte, at int, addr uint64) (*cie, error) {
	if at < 0 || at >= len(data) {
		return nil, errors.New("CIE pointer out of range")
	}
	body, end, id, err := entry(data, at)
	if err != nil {
		return nil, err
	}
	if id != 0 || end-body < 4 {
		return nil, errors.New("CIE pointer does not point to a CIE")
	}
	return parseCIE(&reader{b: data[:end], off: body + 4}, addr)
}

// fdeAt parses the FDE at offset start; cies caches the CIEs read so far (nil: none).
func fdeAt(data []byte, start int, addr uint64, cies map[int]*cie) (fde, error) {
	body, end, id, err := entry(data, start)
	if err != nil {
		return fde{}, err
	}
	if id == 0 {
		return fde{}, fmt.Errorf("entry at %#x is a CIE, not an FDE", start)
	}
	at := body - int(id)
	c := cies[at]
	if c == nil {
		if c, err = cieAt(data, at, addr); err != nil {
			return fde{}, fmt.Errorf("FDE at %#x: %w", start, err)
		}
		if cies != nil {
			cies[at] = c
		}
	}
	fr := &reader{b: data[:end], off: body + 4}
	lo, err := fr.pointer(c.fdeEnc, addr)
	if err != nil {
		return fde{}, fmt.Errorf("FDE at %#x: %w", start, err)
	}
	n, err := fr.pointer(c.fdeEnc&0x0f, addr)
	if err != nil {
		return fde{}, fmt.Errorf("FDE at %#x: %w", start, err)
	}
	if c.hasAug {
		skip := fr.uleb()
		if fr.err != nil || skip > uint64(end-fr.off) {
			return fde{}, fmt.Errorf("FDE at %#x: truncated", start)
		}
		fr.off += int(skip)
	}
	if fr.err != nil || fr.off > end {
		return fde{}, fmt.Errorf("FDE at %#x: truncated", start)
	}
	return fde{lo: lo, hi: lo + n, cie: c, insns: data[fr.off:end]}, nil
}

// parse reads every entry of .eh_frame (data, at link-time address addr).
func (t *Table) parse(data []byte, addr uint64) error {
	cies := map[int]*cie{}
	for off := 0; off < len(data); {
		body, end, id, err := entry(data, off)
		if err != nil {
			return err
		}
		if end == body {
			break // the terminator
		}
		if id == 0 {
			c, err := parseCIE(&reader{b: data[:end], off: body + 4}, addr)
			if err != nil {
				return fmt.Errorf("CIE at %#x: %w", off, err)
			}
			cies[off] = c
		} else {
			f, err := fdeAt(data, off, addr, cies)
			if err != nil {
				return err
			}
			if f.hi > f.lo {
				t.fdes = append(t.fdes, f)
			}
		}
		off = end
	}
	sort.Slice(t.fdes, func(i, j int) bool { return t.fdes[i].lo < t.fdes[j].lo })
	return nil
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

// find returns the description of the function holding pc (link-time address), nil
// when none does.
func (t *Table) find(pc uint64) (*fde, error) {
	if t.index == nil {
		i := sort.Search(len(t.fdes), func(i int) bool { return t.fdes[i].hi > pc })
		if i < len(t.fdes) && t.fdes[i].lo <= pc {
			return &t.fdes[i], nil
		}
		return nil, nil
	}
	at := func(i, field int) uint64 {
		return t.hdrAddr + uint64(int64(int32(le.Uint32(t.index[8*i+4*field:]))))
	}
	n := len(t.index) / 8
	i := sort.Search(n, func(i int) bool { return at(i, 0) > pc }) - 1
	if i < 0 {
		return nil, nil
	}
	off := at(i, 1) - t.frameAddr
	if off >= uint64(len(t.frame)) {
		return nil, fmt.Errorf("search table entry %d points outside .eh_frame", i)
	}
	var f *fde
	if v, ok := t.read.Load(off); ok {
		f = v.(*fde)
	} else {
		d, err := fdeAt(t.frame, int(off), t.frameAddr, nil)
		if err != nil {
			return nil, err
		}
		f = &d
		t.read.Store(off, f)
	}
	if pc < f.lo || pc >= f.hi {
		return nil, nil
	}
	return f, nil
}
