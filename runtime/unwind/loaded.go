package unwind

import "encoding/binary"

// ParseLoaded reads the table of a little-endian ELF64 file whose bytes are all in
// image through its program headers alone, as a process's own unwinder does:
// PT_GNU_EH_FRAME locates .eh_frame_hdr, whose search table and pointer to
// .eh_frame are all a lookup needs. The section headers (at the end of the file,
// for libc a page of its own and the names' string table) are never touched, so a
// file mapped into memory costs the few pages at its start and those a lookup
// reads. It reports false when the file has no such header or not in the usual
// form; the caller then parses the section headers (ParseImage), which also reads a
// whole .eh_frame that has no search table. Malformed input yields false, never a
// panic, beyond a fault on the mapping itself (the caller guards against that).
func ParseLoaded(image []byte) (*Table, bool) {
	const (
		ehsize     = 64
		phentsize  = 56
		ptLoad     = 1
		ptEHFrame  = 0x6474e550 // PT_GNU_EH_FRAME
		classELF64 = 2
		dataLSB    = 1
	)
	if len(image) < ehsize || string(image[:4]) != "\x7fELF" || image[4] != classELF64 || image[5] != dataLSB {
		return nil, false
	}
	phoff := binary.LittleEndian.Uint64(image[32:])
	if binary.LittleEndian.Uint16(image[54:]) != phentsize {
		return nil, false
	}
	phnum := uint64(binary.LittleEndian.Uint16(image[56:]))
	if phoff > uint64(len(image)) || phnum > (uint64(len(image))-phoff)/phentsize {
		return nil, false
	}
	t := &Table{}
	var hdr []byte
	var hdrAddr uint64
	for i := uint64(0); i < phnum; i++ {
		p := image[phoff+i*phentsize : phoff+(i+1)*phentsize]
		typ := binary.LittleEndian.Uint32(p)
		off, vaddr, filesz := binary.LittleEndian.Uint64(p[8:]), binary.LittleEndian.Uint64(p[16:]), binary.LittleEndian.Uint64(p[32:])
		switch typ {
		case ptLoad:
			t.addLoad(Load{Offset: off, Vaddr: vaddr, Filesz: filesz})
		case ptEHFrame:
			if off > uint64(len(image)) || filesz > uint64(len(image))-off {
				return nil, false
			}
			hdr, hdrAddr = image[off:off+filesz:off+filesz], vaddr
		}
	}
	if hdr == nil {
		return nil, false
	}
	// .eh_frame_hdr starts with its version and the encodings of the pointer to
	// .eh_frame, of the count and of the table; then comes that pointer.
	r := &reader{b: hdr}
	version, ptrEnc, _, _ := r.u8(), r.u8(), r.u8(), r.u8()
	if r.err != nil || version != 1 {
		return nil, false
	}
	frameAddr, err := r.pointer(ptrEnc, hdrAddr)
	if err != nil || ptrEnc == peOmit { // no pointer: only the section headers say where .eh_frame is
		return nil, false
	}
	frame, ok := t.loadedAt(image, frameAddr)
	if !ok || !t.useIndex(hdr, hdrAddr, frame, frameAddr) || !t.indexInFrame() {
		return nil, false
	}
	return t, true
}

// indexInFrame reports whether the search table's first and last entries lead into
// the bytes taken as .eh_frame. A pointer to .eh_frame that is present but wrong
// would otherwise make every lookup fail where the section headers would have given
// the right table; declining sends the caller there.
func (t *Table) indexInFrame() bool {
	n := len(t.index) / 8
	for _, i := range []int{0, n - 1} {
		fde := t.hdrAddr + uint64(int64(int32(le.Uint32(t.index[i*8+4:])))) // datarel, sdata4
		if fde < t.frameAddr || fde-t.frameAddr >= uint64(len(t.frame)) {
			return false
		}
	}
	return true
}

// loadedAt returns the file's bytes from link-time address addr to the end of the
// PT_LOAD segment that holds it: .eh_frame lies there, and reads of its entries stay
// within those bytes (its exact size is in the section headers only).
func (t *Table) loadedAt(image []byte, addr uint64) ([]byte, bool) {
	for _, l := range t.Loads {
		if addr < l.Vaddr || addr-l.Vaddr >= l.Filesz {
			continue
		}
		start, end := l.Offset+(addr-l.Vaddr), l.Offset+l.Filesz
		if end < l.Offset || end > uint64(len(image)) {
			return nil, false
		}
		return image[start:end:end], true
	}
	return nil, false
}
