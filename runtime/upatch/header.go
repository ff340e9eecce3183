package upatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/proc"
)

// The header is the first thing in every patch region mapped into a process. It makes
// the process self-describing: `upatch-manage info` and a restarted helper read what is
// applied from the process itself, and unpatch needs nothing but the UUID.
//
//	offset size
//	0      8    magic "UPATCH\x00\x01"
//	8      4    header format version (1)
//	12     4    number of functions N
//	16     48   patch UUID, NUL padded
//	64     8    sequence number: 1 + the highest sequence of the patches already in the
//	            process when this one was applied (orders stacked patches)
//	72     8    total region size in bytes (header + text + data), for munmap
//	80     8    text region size (header included), mapped r-x
//	88     8    load bias of the target ELF when patched
//	96     4    length of the target path
//	100    4    state: 0 committed, 1 pending (written, jumps not all in yet)
//	104    8    address of the process's shadow-variable table (shadow.go) if the
//	            patch uses it, else 0
//	112    16   reserved
//	128    N*64 functions: old address u64, new address u64, new size u64, jump length u32,
//	            symbol position u32, original bytes [16], name offset u32, name length u32,
//	            reserved [8]
//	...         target path, then function names (offsets are relative to the header start)
const (
	headerMagic     = "UPATCH\x00\x01"
	headerVersion   = 1
	headerFixedSize = 128
	headerFuncSize  = 64
	maxUUIDLen      = 47
	maxJumpLen      = 16
	headerStateOff  = 100
	headerShadowOff = 104
	statePending    = 1
)

var errNotHeader = errors.New("not a patch header")

// Header describes one patch inside a process.
type Header struct {
	UUID     string
	Seq      uint64
	Size     uint64 // whole region
	TextSize uint64 // header + code, r-x
	Bias     uint64
	Target   string
	Funcs    []HeaderFunc
	// Pending: the patch was being applied when its tool stopped (killed,
	// crashed); its jumps may be partly written. The next run rolls it back.
	Pending   bool
	Shadow    uint64 // the shadow-variable table the patch uses, 0: none
	Base      uint64 // address of the header in the process (not encoded)
	EncodedSz uint64 // bytes the encoded header takes (not encoded)
}

// HeaderFunc is one replaced function.
type HeaderFunc struct {
	Name    string
	Pos     uint32
	Old     uint64
	New     uint64
	NewSize uint64
	Orig    []byte // the bytes the jump overwrote (its length is the jump length)
}

// encodedSize returns the header's size in bytes, rounded to 64.
func (h *Header) encodedSize() int {
	n := headerFixedSize + headerFuncSize*len(h.Funcs) + len(h.Target)
	for _, f := range h.Funcs {
		n += len(f.Name)
	}
	return (n + 63) &^ 63
}

// Encode serialises the header.
func (h *Header) Encode() ([]byte, error) {
	if len(h.UUID) == 0 || len(h.UUID) > maxUUIDLen {
		return nil, fmt.Errorf("uuid %q: length must be 1..%d", h.UUID, maxUUIDLen)
	}
	b := make([]byte, h.encodedSize())
	le := binary.LittleEndian
	copy(b, headerMagic)
	le.PutUint32(b[8:], headerVersion)
	le.PutUint32(b[12:], uint32(len(h.Funcs)))
	copy(b[16:64], h.UUID)
	le.PutUint64(b[64:], h.Seq)
	le.PutUint64(b[72:], h.Size)
	le.PutUint64(b[80:], h.TextSize)
	le.PutUint64(b[88:], h.Bias)
	str := headerFixedSize + headerFuncSize*len(h.Funcs)
	// The target path is stored at the start of the string area; its length in reserved[0:4].
	le.PutUint32(b[96:], uint32(len(h.Target)))
	if h.Pending {
		le.PutUint32(b[headerStateOff:], statePending)
	}
	le.PutUint64(b[headerShadowOff:], h.Shadow)
	copy(b[str:], h.Target)
	str += len(h.Target)
	for i, f := range h.Funcs {
		if len(f.Orig) == 0 || len(f.Orig) > maxJumpLen {
			return nil, fmt.Errorf("function %q: jump length %d", f.Name, len(f.Orig))
		}
		e := b[headerFixedSize+headerFuncSize*i:]
		le.PutUint64(e[0:], f.Old)
		le.PutUint64(e[8:], f.New)
		le.PutUint64(e[16:], f.NewSize)
		le.PutUint32(e[24:], uint32(len(f.Orig)))
		le.PutUint32(e[28:], f.Pos)
		copy(e[32:48], f.Orig)
		le.PutUint32(e[48:], uint32(str))
		le.PutUint32(e[52:], uint32(len(f.Name)))
		copy(b[str:], f.Name)
		str += len(f.Name)
	}
	return b, nil
}

// decodeHeader parses a header; b must hold at least the whole header. It never
// trusts the process: every offset is bounds-checked.
func decodeHeader(b []byte) (*Header, error) {
	if len(b) < headerFixedSize || !bytes.Equal(b[:8], []byte(headerMagic)) {
		return nil, errNotHeader
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != headerVersion {
		return nil, fmt.Errorf("patch header version %d not supported", v)
	}
	n := int(le.Uint32(b[12:]))
	if n <= 0 || n > 1<<16 || headerFixedSize+headerFuncSize*n > len(b) {
		return nil, fmt.Errorf("patch header: bad function count %d", n)
	}
	h := &Header{
		UUID:     string(bytes.TrimRight(b[16:64], "\x00")),
		Seq:      le.Uint64(b[64:]),
		Size:     le.Uint64(b[72:]),
		TextSize: le.Uint64(b[80:]),
		Bias:     le.Uint64(b[88:]),
		Pending:  le.Uint32(b[headerStateOff:]) != 0,
		Shadow:   le.Uint64(b[headerShadowOff:]),
	}
	str := headerFixedSize + headerFuncSize*n
	tl := int(le.Uint32(b[96:]))
	if tl < 0 || str+tl > len(b) {
		return nil, fmt.Errorf("patch header %s: bad target path length", h.UUID)
	}
	h.Target = string(b[str : str+tl])
	for i := 0; i < n; i++ {
		e := b[headerFixedSize+headerFuncSize*i:]
		jl := int(le.Uint32(e[24:]))
		off, nl := int(le.Uint32(e[48:])), int(le.Uint32(e[52:]))
		if jl <= 0 || jl > maxJumpLen || off < 0 || nl < 0 || off+nl > len(b) {
			return nil, fmt.Errorf("patch header %s: function %d is corrupt", h.UUID, i)
		}
		h.Funcs = append(h.Funcs, HeaderFunc{
			Old: le.Uint64(e[0:]), New: le.Uint64(e[8:]), NewSize: le.Uint64(e[16:]),
			Pos: le.Uint32(e[28:]), Orig: append([]byte(nil), e[32:32+jl]...), Name: string(b[off : off+nl]),
		})
	}
	h.EncodedSz = uint64(h.encodedSize())
	return h, nil
}

// memReader reads a process's memory: a stopped *ptrace.Process, or ptrace.Remote
// for a running one.
type memReader interface {
	ReadMem(addr uint64, buf []byte) error
}

// readHeaders finds the patch headers in the process: anonymous r-x mappings that
// start with the header magic.
func readHeaders(pr memReader, maps []proc.Mapping) ([]*Header, error) {
	var out []*Header
	prefix := make([]byte, headerFixedSize)
	for _, m := range maps {
		if m.Inode != 0 || m.Path != "" || !strings.HasPrefix(m.Perms, "r-x") || m.End-m.Start < pageSize {
			continue
		}
		if err := pr.ReadMem(m.Start, prefix); err != nil || string(prefix[:8]) != headerMagic {
			continue
		}
		n := int(binary.LittleEndian.Uint32(prefix[12:]))
		textSize := binary.LittleEndian.Uint64(prefix[80:])
		if n <= 0 || textSize < headerFixedSize || textSize > m.End-m.Start {
			continue
		}
		size := min(textSize, 1<<20)
		b := make([]byte, size)
		if err := pr.ReadMem(m.Start, b); err != nil {
			return nil, fmt.Errorf("read patch header at %#x: %w", m.Start, err)
		}
		h, err := decodeHeader(b)
		if err != nil {
			return nil, fmt.Errorf("patch header at %#x: %w", m.Start, err)
		}
		h.Base = m.Start
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

// readHeaderAt reads the header of the patch region at base.
func readHeaderAt(pr memReader, base uint64) (*Header, error) {
	prefix := make([]byte, headerFixedSize)
	if err := pr.ReadMem(base, prefix); err != nil {
		return nil, err
	}
	textSize := binary.LittleEndian.Uint64(prefix[80:])
	if string(prefix[:8]) != headerMagic || textSize < headerFixedSize {
		return nil, errNotHeader
	}
	b := make([]byte, min(textSize, 1<<20))
	if err := pr.ReadMem(base, b); err != nil {
		return nil, fmt.Errorf("read patch header at %#x: %w", base, err)
	}
	h, err := decodeHeader(b)
	if err != nil {
		return nil, fmt.Errorf("patch header at %#x: %w", base, err)
	}
	h.Base = base
	return h, nil
}
