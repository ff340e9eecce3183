// Package elfsafe opens ELF files without letting hostile input crash the caller.
//
// debug/elf is not hardened against malformed files: some corrupt headers make it
// panic (index out of range, huge allocations). Every ELF the project reads from
// disk or from a process goes through this package, which turns such panics into
// errors that name the file.
package elfsafe

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrMalformed is wrapped by every error that comes from a panic inside debug/elf.
var ErrMalformed = errors.New("malformed ELF")

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
	if err != nil {
		return nil, err
	}
	return f, nil
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
