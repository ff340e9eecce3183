package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// ErrDebuginfo: the debuginfo does not describe a usable kernel.
var ErrDebuginfo = errors.New("kernel debuginfo")

// Export is one symbol the kernel exports to modules.
type Export struct {
	Name      string
	CRC       uint32
	GPL       bool
	Namespace string
}

// ksym is one symbol of the kernel's .symtab, with the source file it follows.
type ksym struct {
	name  string
	typ   elf.SymType
	bind  elf.SymBind
	value uint64
	size  uint64
	file  string
}

// Vmlinux is what the build reads from the debuginfo's vmlinux: its symbols (to place
// the fix's references), exports with their CRCs (for modversions), vermagic and
// build-id.
type Vmlinux struct {
	Path     string
	BuildID  string
	Vermagic string
	Exports  map[string]Export
	Symbols
}

// Symbols are the symbols of one patched object (vmlinux or a module) by name, each
// list in the order livepatch counts positions in.
type Symbols struct {
	byName map[string][]*ksym
}

// ReadVmlinux reads the vmlinux at path.
func ReadVmlinux(path string) (*Vmlinux, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDebuginfo, path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: %s is not an x86-64 kernel image", ErrDebuginfo, path)
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: symbol table: %w", ErrDebuginfo, path, err)
	}
	v := &Vmlinux{Path: path, Exports: map[string]Export{}, Symbols: Symbols{byName: map[string][]*ksym{}}}
	file := ""
	all := map[string]elf.Symbol{}
	for _, s := range syms {
		typ := elf.ST_TYPE(s.Info)
		if typ == elf.STT_FILE {
			file = s.Name
			continue
		}
		if s.Name == "" || typ == elf.STT_SECTION {
			continue
		}
		bind := elf.ST_BIND(s.Info)
		if bind != elf.STB_LOCAL {
			file = ""
		}
		v.byName[s.Name] = append(v.byName[s.Name], &ksym{name: s.Name, typ: typ, bind: bind, value: s.Value, size: s.Size, file: file})
		all[s.Name] = s
	}
	for _, l := range v.byName {
		sort.SliceStable(l, func(i, j int) bool { return l[i].value < l[j].value })
	}
	read := func(addr, n uint64) ([]byte, error) {
		for _, p := range f.Progs {
			if p.Type == elf.PT_LOAD && addr >= p.Vaddr && addr+n <= p.Vaddr+p.Filesz {
				b := make([]byte, n)
				_, err := p.ReadAt(b, int64(addr-p.Vaddr))
				return b, err
			}
		}
		return nil, fmt.Errorf("address %#x is in no loaded segment", addr)
	}
	vm, ok := all["vermagic"]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no vermagic symbol: not a vmlinux with its symbol table", ErrDebuginfo, path)
	}
	b, err := read(vm.Value, vm.Size)
	if err != nil {
		return nil, fmt.Errorf("%w: vermagic: %w", ErrDebuginfo, err)
	}
	v.Vermagic = string(bytes.TrimRight(b, "\x00"))
	// Exports: __ksymtab_NAME in __ksymtab or __ksymtab_gpl, CRC at __crc_NAME.
	secName := func(s elf.Symbol) string {
		if int(s.Section) < len(f.Sections) {
			return f.Sections[s.Section].Name
		}
		return ""
	}
	for name, s := range all {
		exp, ok := strings.CutPrefix(name, "__ksymtab_")
		if !ok {
			continue
		}
		sec := secName(s)
		if sec != "__ksymtab" && sec != "__ksymtab_gpl" {
			continue
		}
		e := Export{Name: exp, GPL: sec == "__ksymtab_gpl"}
		if c, ok := all["__crc_"+exp]; ok {
			cb, err := read(c.Value, 4)
			if err != nil {
				return nil, fmt.Errorf("%w: CRC of %s: %w", ErrDebuginfo, exp, err)
			}
			e.CRC = binary.LittleEndian.Uint32(cb)
		}
		// struct kernel_symbol with relative references: value, name, namespace.
		if ent, err := read(s.Value, 12); err == nil {
			if off := int32(binary.LittleEndian.Uint32(ent[8:])); off != 0 {
				if ns, err := read(uint64(int64(s.Value)+8+int64(off)), 64); err == nil {
					if i := bytes.IndexByte(ns, 0); i >= 0 {
						e.Namespace = string(ns[:i])
					}
				}
			}
		}
		v.Exports[exp] = e
	}
	if len(v.Exports) == 0 {
		return nil, fmt.Errorf("%w: %s exports no symbols (no __ksymtab_ symbols)", ErrDebuginfo, path)
	}
	if sec := f.Section(".notes"); sec != nil {
		if data, err := sec.Data(); err == nil {
			if id := elfsafe.FindBuildIDNote(data, binary.LittleEndian); id != nil {
				v.BuildID = hex.EncodeToString(id)
			}
		}
	}
	return v, nil
}

// Release is the kernel release the vermagic names (its first word).
func (v *Vmlinux) Release() string {
	r, _, _ := strings.Cut(v.Vermagic, " ")
	return r
}

// WriteSymvers writes the exports as Module.symvers (CRC, name, vmlinux, export type,
// namespace), sorted by name.
func (v *Vmlinux) WriteSymvers(w io.Writer) error {
	names := make([]string, 0, len(v.Exports))
	for n := range v.Exports {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := v.Exports[n]
		typ := "EXPORT_SYMBOL"
		if e.GPL {
			typ = "EXPORT_SYMBOL_GPL"
		}
		if _, err := fmt.Fprintf(w, "0x%08x\t%s\tvmlinux\t%s\t%s\n", e.CRC, n, typ, e.Namespace); err != nil {
			return err
		}
	}
	return nil
}

// Pos tells the position kallsyms gives the symbol name defined in source file file
// (its STT_FILE name) among the same-named symbols: 0 when the name is unique, else
// its 1-based rank in address order (what klp_func.old_sympos and .klp.sym take).
func (v *Symbols) Pos(name, file string, isFunc bool) (uint64, error) {
	l := v.byName[name]
	switch len(l) {
	case 0:
		return 0, fmt.Errorf("%s is not in the kernel's symbol table", name)
	case 1:
		return 0, nil
	}
	match := -1
	for i, s := range l {
		if s.bind == elf.STB_LOCAL && s.file == file && (s.typ == elf.STT_FUNC) == isFunc {
			if match >= 0 {
				return 0, fmt.Errorf("%s: %d local symbols of that name follow a file %s in the kernel's symbol table; cannot tell which one the fix is for", name, len(l), file)
			}
			match = i
		}
	}
	if match < 0 {
		return 0, fmt.Errorf("%s: %d symbols of that name in the kernel, none a local of %s", name, len(l), file)
	}
	return uint64(match + 1), nil
}

// GlobalPos tells the position of the global definition of name among the same-named
// symbols (0 when unique), and whether the kernel has one.
func (v *Symbols) GlobalPos(name string) (uint64, bool) {
	l := v.byName[name]
	for i, s := range l {
		if s.bind != elf.STB_LOCAL {
			if len(l) == 1 {
				return 0, true
			}
			return uint64(i + 1), true
		}
	}
	return 0, false
}

// Has tells whether the kernel has a symbol name.
func (v *Symbols) Has(name string) bool { return len(v.byName[name]) > 0 }

// ModuleSyms is a kernel module's symbols, read from its debug file.
type ModuleSyms struct {
	Name string
	Symbols
}

// ReadModule reads the symbols of a module's debug file (an unstripped .ko). Livepatch
// counts a module's symbols in its symbol table's order, over the symbols the module
// keeps for kallsyms (defined in allocated sections).
func ReadModule(path string) (*ModuleSyms, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrDebuginfo, path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_REL || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%w: %s is not an x86-64 kernel module", ErrDebuginfo, path)
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: symbol table: %w", ErrDebuginfo, path, err)
	}
	m := &ModuleSyms{Symbols: Symbols{byName: map[string][]*ksym{}}}
	file := ""
	for _, s := range syms {
		typ := elf.ST_TYPE(s.Info)
		if typ == elf.STT_FILE {
			file = s.Name
			continue
		}
		if s.Name == "" || typ == elf.STT_SECTION || s.Section == elf.SHN_UNDEF || int(s.Section) >= len(f.Sections) ||
			f.Sections[s.Section].Flags&elf.SHF_ALLOC == 0 {
			continue
		}
		bind := elf.ST_BIND(s.Info)
		m.byName[s.Name] = append(m.byName[s.Name], &ksym{name: s.Name, typ: typ, bind: bind, value: s.Value, size: s.Size, file: file})
	}
	if sec := f.Section(".gnu.linkonce.this_module"); sec != nil {
		if data, err := sec.Data(); err == nil && len(data) > 24 {
			// struct module's name field: after the state and the list head.
			name := data[24:]
			if i := bytes.IndexByte(name, 0); i > 0 {
				m.Name = string(name[:i])
			}
		}
	}
	if m.Name == "" {
		return nil, fmt.Errorf("%w: %s: no module name (.gnu.linkonce.this_module)", ErrDebuginfo, path)
	}
	return m, nil
}
