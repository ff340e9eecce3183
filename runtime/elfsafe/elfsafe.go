// Package elfsafe opens ELF files without letting hostile input crash the caller.
//
// debug/elf is not hardened against malformed files: some corrupt headers make it
// panic (index out of range, huge allocations). Every ELF the project reads from
// disk or from a process goes through this package, which turns such panics into
// errors that name the file.
package elfsafe

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrMalformed is wrapped by every error that comes from a panic inside debug/elf.
var ErrMalformed = errors.New("malformed ELF")

// ErrTruncated is wrapped when the file ends before data its headers point to: the
// message says at which byte it ends and what lay beyond, where debug/elf says "EOF".
var ErrTruncated = errors.New("truncated")

// Guard runs fn and converts a panic raised by debug/elf into an error.
func Guard(what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: %w: %v", what, ErrMalformed, r)
		}
	}()
	return fn()
}

// NewFile parses an ELF image from r.
func NewFile(r io.ReaderAt) (*elf.File, error) {
	var f *elf.File
	err := Guard("parse ELF", func() error {
		var err error
		f, err = elf.NewFile(r)
		return err
	})
	if isEOF(err) {
		return nil, fmt.Errorf("parse ELF: %w", truncatedHeaders(r))
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// readerSize returns how many bytes r holds: from Size or Stat when r has them,
// otherwise by finding the last readable byte.
func readerSize(r io.ReaderAt) int64 {
	switch v := r.(type) {
	case interface{ Size() int64 }:
		return v.Size()
	case interface{ Stat() (os.FileInfo, error) }:
		if st, err := v.Stat(); err == nil && st.Mode().IsRegular() {
			return st.Size()
		}
	}
	var b [1]byte
	lo, hi := int64(0), int64(1)
	for {
		if n, _ := r.ReadAt(b[:], hi-1); n == 0 {
			break
		}
		lo, hi = hi, hi*2
		if hi > 1<<40 {
			return hi
		}
	}
	// Byte lo-1 is readable (or lo is 0) and byte hi-1 is not: the size is in [lo, hi).
	for lo+1 < hi {
		mid := (lo + hi) / 2
		if n, _ := r.ReadAt(b[:], mid-1); n == 1 {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

// truncatedHeaders says which part of the ELF file lies beyond its end, reading the
// few header fields it needs itself (debug/elf could not).
func truncatedHeaders(r io.ReaderAt) error {
	size := readerSize(r)
	var hdr [64]byte
	n, _ := r.ReadAt(hdr[:], 0)
	if n < 16 {
		return fmt.Errorf("%w: the file ends at byte %d, inside the 16-byte ELF identification", ErrTruncated, size)
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if elf.Data(hdr[elf.EI_DATA]) == elf.ELFDATA2MSB {
		bo = binary.BigEndian
	}
	var phoff, shoff uint64
	var hsize, phentsize, phnum, shentsize, shnum, shstrndx int
	if elf.Class(hdr[elf.EI_CLASS]) == elf.ELFCLASS32 {
		hsize = 52
		phoff, shoff = uint64(bo.Uint32(hdr[28:])), uint64(bo.Uint32(hdr[32:]))
		phentsize, phnum = int(bo.Uint16(hdr[42:])), int(bo.Uint16(hdr[44:]))
		shentsize, shnum, shstrndx = int(bo.Uint16(hdr[46:])), int(bo.Uint16(hdr[48:])), int(bo.Uint16(hdr[50:]))
	} else {
		hsize = 64
		phoff, shoff = bo.Uint64(hdr[32:]), bo.Uint64(hdr[40:])
		phentsize, phnum = int(bo.Uint16(hdr[54:])), int(bo.Uint16(hdr[56:]))
		shentsize, shnum, shstrndx = int(bo.Uint16(hdr[58:])), int(bo.Uint16(hdr[60:])), int(bo.Uint16(hdr[62:]))
	}
	if n < hsize {
		return fmt.Errorf("%w: the file ends at byte %d, inside the %d-byte ELF header", ErrTruncated, size, hsize)
	}
	beyond := func(what string, off, length uint64) error {
		return fmt.Errorf("%w: the file ends at byte %d, inside the %s (bytes %d..%d)", ErrTruncated, size, what, off, off+length)
	}
	if l := uint64(phentsize) * uint64(phnum); l > 0 && phoff+l > uint64(size) {
		return beyond("program header table", phoff, l)
	}
	if l := uint64(shentsize) * uint64(shnum); l > 0 && shoff+l > uint64(size) {
		return beyond("section header table", shoff, l)
	}
	if shnum > 0 && shstrndx < shnum && hsize == 64 && shentsize >= 64 {
		var sh [64]byte
		if n, _ := r.ReadAt(sh[:], int64(shoff)+int64(shstrndx*shentsize)); n == 64 {
			off, l := bo.Uint64(sh[24:]), bo.Uint64(sh[32:])
			if elf.SectionType(bo.Uint32(sh[4:])) != elf.SHT_NOBITS && off+l > uint64(size) {
				return beyond(fmt.Sprintf("section name table (section %d)", shstrndx), off, l)
			}
		}
	}
	return fmt.Errorf("%w: the file ends at byte %d", ErrTruncated, size)
}

// File is an ELF file opened from disk; Close releases the descriptor.
type File struct {
	*elf.File
	osFile *os.File
}

// Open opens and parses the ELF file at path.
func Open(path string) (*File, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	f, err := NewFile(fd)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &File{File: f, osFile: fd}, nil
}

// Close closes the underlying file.
func (f *File) Close() error { return f.osFile.Close() }

// Symbols returns the static symbol table, or nil and elf.ErrNoSymbols.
func Symbols(f *elf.File) ([]elf.Symbol, error) {
	var syms []elf.Symbol
	err := Guard("read symbols", func() error {
		var err error
		syms, err = f.Symbols()
		return err
	})
	return syms, err
}

// DynamicSymbols returns the dynamic symbol table.
func DynamicSymbols(f *elf.File) ([]elf.Symbol, error) {
	var syms []elf.Symbol
	err := Guard("read dynamic symbols", func() error {
		var err error
		syms, err = f.DynamicSymbols()
		return err
	})
	return syms, err
}

// SectionData returns the contents of s (nil for SHT_NOBITS).
func SectionData(s *elf.Section) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS {
		return nil, nil
	}
	var b []byte
	err := Guard(fmt.Sprintf("section %q", s.Name), func() error {
		var err error
		b, err = s.Data()
		return err
	})
	if isEOF(err) && s.Flags&elf.SHF_COMPRESSED == 0 && s.ReaderAt != nil {
		// Count what is there to say where the file ends.
		have, _ := io.Copy(io.Discard, io.NewSectionReader(s.ReaderAt, 0, int64(s.FileSize)))
		return nil, fmt.Errorf("%w: the file ends at byte %d, %d bytes into the section's %d bytes at offset %d",
			ErrTruncated, int64(s.Offset)+have, have, s.FileSize, s.Offset)
	}
	return b, err
}

// BuildID returns the GNU build-id note of f, or nil when it has none.
func BuildID(f *elf.File) ([]byte, error) {
	var id []byte
	err := Guard("read build-id", func() error {
		for _, s := range f.Sections {
			if s.Type != elf.SHT_NOTE {
				continue
			}
			data, err := SectionData(s)
			if err != nil {
				return err
			}
			if v := findBuildIDNote(data, f.ByteOrder); v != nil {
				id = v
				return nil
			}
		}
		// Stripped files may have no section headers: fall back to PT_NOTE.
		for _, p := range f.Progs {
			if p.Type != elf.PT_NOTE {
				continue
			}
			data := make([]byte, p.Filesz)
			if _, err := p.ReadAt(data, 0); err != nil {
				return err
			}
			if v := findBuildIDNote(data, f.ByteOrder); v != nil {
				id = v
				return nil
			}
		}
		return nil
	})
	return id, err
}

// ntGNUBuildID is the note type of a GNU build-id (NT_GNU_BUILD_ID).
const ntGNUBuildID = 3

// FindBuildIDNote scans a buffer of ELF notes for a GNU build-id.
func FindBuildIDNote(data []byte, bo interface{ Uint32([]byte) uint32 }) []byte {
	return findBuildIDNote(data, bo)
}

func findBuildIDNote(data []byte, bo interface{ Uint32([]byte) uint32 }) []byte {
	align4 := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz := uint64(bo.Uint32(data[0:]))
		descsz := uint64(bo.Uint32(data[4:]))
		typ := bo.Uint32(data[8:])
		off := uint64(12)
		nameEnd := off + namesz
		descOff := off + align4(namesz)
		descEnd := descOff + descsz
		if nameEnd > uint64(len(data)) || descEnd > uint64(len(data)) || descOff > uint64(len(data)) {
			return nil
		}
		if typ == ntGNUBuildID && namesz == 4 && string(data[off:off+3]) == "GNU" {
			return append([]byte(nil), data[descOff:descEnd]...)
		}
		next := off + align4(namesz) + align4(descsz)
		if next > uint64(len(data)) {
			return nil
		}
		data = data[next:]
	}
	return nil
}
