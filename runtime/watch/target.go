package watch

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// ErrNoInit is returned by Add for a shared library that has no initializer (neither DT_INIT
// nor DT_INIT_ARRAY): nothing of it runs at load time, so there is no point to stop a process at.
var ErrNoInit = errors.New("shared library has no initializer")

// kind says how a watched file is run, which decides where its probe goes.
type kind int

const (
	kindExecutable kind = iota
	kindLibrary
)

func (k kind) String() string {
	if k == kindLibrary {
		return "library"
	}
	return "executable"
}

// probePoint is where a file's probe goes: a file offset, as uprobes want it.
type probePoint struct {
	kind   kind
	vaddr  uint64 // link-time address of the probed instruction
	offset uint64 // its file offset
}

// findProbePoint reads the ELF at path and returns the first instruction every new image of it
// runs.
//
// An executable (ET_EXEC, or ET_DYN marked DF_1_PIE, or an ET_DYN with an interpreter and no
// soname as older linkers made PIEs) is probed at e_entry: the kernel or ld.so jumps there
// before anything of the program runs, and it runs exactly once per exec.
//
// A shared library is probed at DT_INIT if it has one, else at the first DT_INIT_ARRAY entry.
// ld.so calls, for each object, DT_INIT first and then the DT_INIT_ARRAY entries, and it runs
// the initializers of the libraries loaded at startup before it jumps to the executable's
// entry point, so the process is stopped before main and before anything of the library
// itself runs. A library loaded later by dlopen is caught the same way, before dlopen returns.
// Entry points of exported functions would catch a process only once it calls them, and
// ld.so's own symbols are not per-library, so the initializer is the one place that is.
func findProbePoint(path string) (probePoint, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return probePoint{}, err
	}
	defer f.Close()
	var pp probePoint
	err = elfsafe.Guard(path, func() error {
		var err error
		pp, err = probePointOf(f.File)
		return err
	})
	if err != nil {
		return probePoint{}, fmt.Errorf("%s: %w", path, err)
	}
	return pp, nil
}

func probePointOf(f *elf.File) (probePoint, error) {
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return probePoint{}, fmt.Errorf("ELF class %v %v: %w", f.Class, f.Data, errors.ErrUnsupported)
	}
	switch f.Type {
	case elf.ET_EXEC, elf.ET_DYN:
	default:
		return probePoint{}, fmt.Errorf("ELF type %v is neither executable nor shared object: %w", f.Type, errors.ErrUnsupported)
	}
	dyn, err := dynamicEntries(f)
	if err != nil {
		return probePoint{}, err
	}
	k := kindExecutable
	if f.Type == elf.ET_DYN && dyn[elf.DT_FLAGS_1]&uint64(elf.DF_1_PIE) == 0 {
		_, hasSoname := dyn[elf.DT_SONAME]
		if hasSoname || !hasInterp(f) {
			k = kindLibrary
		}
	}
	pp := probePoint{kind: k}
	if k == kindExecutable {
		pp.vaddr = f.Entry
	} else {
		pp.vaddr, err = libraryInit(f, dyn)
		if err != nil {
			return probePoint{}, err
		}
	}
	pp.offset, err = fileOffset(f, pp.vaddr)
	if err != nil {
		return probePoint{}, err
	}
	return pp, nil
}

func hasInterp(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// dynamicEntries returns the first value of each tag of the dynamic section (empty for a
// static executable). It reads PT_DYNAMIC, not section headers, because that is what ld.so
// uses and stripped files may lack the section.
func dynamicEntries(f *elf.File) (map[elf.DynTag]uint64, error) {
	out := make(map[elf.DynTag]uint64)
	for _, p := range f.Progs {
		if p.Type != elf.PT_DYNAMIC {
			continue
		}
		if p.Filesz > 1<<24 {
			return nil, fmt.Errorf("PT_DYNAMIC of %d bytes: %w", p.Filesz, elfsafe.ErrMalformed)
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return nil, fmt.Errorf("read PT_DYNAMIC: %w", err)
		}
		for i := 0; i+16 <= len(b); i += 16 {
			tag := elf.DynTag(binary.LittleEndian.Uint64(b[i:]))
			if tag == elf.DT_NULL {
				break
			}
			if _, seen := out[tag]; !seen {
				out[tag] = binary.LittleEndian.Uint64(b[i+8:])
			}
		}
		break
	}
	return out, nil
}

// libraryInit returns the address of the first initializer ld.so runs for the library.
func libraryInit(f *elf.File, dyn map[elf.DynTag]uint64) (uint64, error) {
	if v := dyn[elf.DT_INIT]; v != 0 {
		return v, nil
	}
	arr, ok := dyn[elf.DT_INIT_ARRAY]
	if !ok || dyn[elf.DT_INIT_ARRAYSZ] < 8 {
		return 0, ErrNoInit
	}
	var slot [8]byte
	if err := readVaddr(f, arr, slot[:]); err != nil {
		return 0, fmt.Errorf("DT_INIT_ARRAY: %w", err)
	}
	if v := binary.LittleEndian.Uint64(slot[:]); v != 0 {
		// GNU ld stores the addend of an R_X86_64_RELATIVE relocation in place, and with
		// DT_RELR the stored word is the addend by definition.
		return v, nil
	}
	// The slot is zero when its relocation is symbolic (an exported constructor gets
	// R_X86_64_64 against its own symbol) or when the linker does not store addends in place
	// (lld without --apply-dynamic-relocs).
	v, err := relocatedSlot(f, dyn, arr)
	if err != nil {
		return 0, fmt.Errorf("DT_INIT_ARRAY[0]: %w", err)
	}
	return v, nil
}

// relocatedSlot returns the value the DT_RELA relocation for address where gives it. A
// symbolic relocation is resolved against the library's own definition: another object could
// interpose the symbol, but a constructor's symbol is not something programs define.
func relocatedSlot(f *elf.File, dyn map[elf.DynTag]uint64, where uint64) (uint64, error) {
	rela, size := dyn[elf.DT_RELA], dyn[elf.DT_RELASZ]
	if rela == 0 || size == 0 {
		return 0, ErrNoInit
	}
	if size > 1<<28 {
		return 0, fmt.Errorf("DT_RELASZ %d: %w", size, elfsafe.ErrMalformed)
	}
	b := make([]byte, size)
	if err := readVaddr(f, rela, b); err != nil {
		return 0, fmt.Errorf("DT_RELA: %w", err)
	}
	for i := 0; i+24 <= len(b); i += 24 {
		if binary.LittleEndian.Uint64(b[i:]) != where {
			continue
		}
		info := binary.LittleEndian.Uint64(b[i+8:])
		addend := binary.LittleEndian.Uint64(b[i+16:])
		switch elf.R_X86_64(info & 0xffffffff) {
		case elf.R_X86_64_RELATIVE:
			return addend, nil
		case elf.R_X86_64_64, elf.R_X86_64_GLOB_DAT:
			return definedSymbol(f, info>>32, addend)
		}
	}
	return 0, ErrNoInit
}

// definedSymbol returns the value of dynamic symbol number idx plus addend.
func definedSymbol(f *elf.File, idx, addend uint64) (uint64, error) {
	syms, err := elfsafe.DynamicSymbols(f)
	if err != nil {
		return 0, err
	}
	// debug/elf drops the null symbol 0 from the list.
	if idx == 0 || idx > uint64(len(syms)) {
		return 0, fmt.Errorf("relocation against symbol %d of %d: %w", idx, len(syms), elfsafe.ErrMalformed)
	}
	s := syms[idx-1]
	if s.Section == elf.SHN_UNDEF {
		return 0, fmt.Errorf("initializer %s is not defined in the library: %w", s.Name, ErrNoInit)
	}
	return s.Value + addend, nil
}

// readVaddr reads len(b) bytes at link-time address v from the file.
func readVaddr(f *elf.File, v uint64, b []byte) error {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && v >= p.Vaddr && v-p.Vaddr+uint64(len(b)) <= p.Filesz {
			_, err := p.ReadAt(b, int64(v-p.Vaddr))
			return err
		}
	}
	return fmt.Errorf("address %#x: not in a loaded segment: %w", v, elfsafe.ErrMalformed)
}

// fileOffset converts a link-time address of code to the file offset uprobes are keyed by.
func fileOffset(f *elf.File, v uint64) (uint64, error) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && v >= p.Vaddr && v-p.Vaddr < p.Filesz {
			return v - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("address %#x: not in an executable segment: %w", v, elfsafe.ErrMalformed)
}
