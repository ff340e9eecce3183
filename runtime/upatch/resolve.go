package upatch

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/symbols"
)

// Resolving the symbols a patch leaves undefined, for one process.

// resolver binds the patch's undefined symbols for one process. Everything is looked
// up before the process is stopped (prepare); only IFUNC symbols need the stopped
// process, whose resolver function is called in it to learn the implementation.
type resolver struct {
	e     *Engine
	pid   int
	obj   *patchobj.Object
	tgt   *target
	maps  []proc.Mapping
	libs  []*lib
	syms  map[patchobj.TargetSym]resolved
	pr    *ptrace.Process // set while the process is stopped
	ifunc map[uint64]uint64
	// The process's shadow-variable table (shadow.go): found before the stop, or
	// mapped while linking (shadowNew) when the patch uses it (usesShadow);
	// adopted: one no applied patch uses, left by an unpatch with KeepShadow.
	shadow                         uint64
	shadowNew, usesShadow, adopted bool
}

type resolved struct {
	addr   uint64
	isFunc bool
	ifunc  bool
	shadow bool // the shadow-variable table
	err    error
}

type lib struct {
	elf  *symbols.ELF
	bias uint64
}

// resolveAll looks up every undefined symbol of obj; a missing strong symbol is an
// error now, before the process is touched.
func (r *resolver) resolveAll(obj *patchobj.Object) error {
	r.syms = map[patchobj.TargetSym]resolved{}
	// Only what a loaded section relocates against is needed: gcc also declares
	// symbols nothing uses (_GLOBAL_OFFSET_TABLE_ in objects with TLS accesses).
	used := map[uint32]bool{}
	for _, sec := range obj.Sections {
		if sec != nil && sec.Load {
			for _, rel := range sec.Relocs {
				used[rel.Sym] = true
			}
		}
	}
	for i, s := range obj.Symbols {
		if s.Defined() || s.Name == "" || s.Type == elf.STT_TLS || !used[uint32(i)] {
			continue
		}
		ts := obj.Target(s.Name)
		if _, ok := r.syms[ts]; ok {
			continue
		}
		res := r.lookup(ts.Name, ts.Pos)
		if res.err != nil && s.Bind != elf.STB_WEAK {
			return res.err
		}
		r.syms[ts] = res
	}
	return nil
}

// Resolve is layout.Resolver.
func (r *resolver) Resolve(name string, pos uint64) (uint64, bool, error) {
	res, ok := r.syms[patchobj.TargetSym{Name: name, Pos: pos}]
	if !ok {
		res = r.lookup(name, pos)
	}
	if res.shadow {
		r.usesShadow = true
		a, err := r.shadowTable()
		return a, false, err
	}
	if res.err != nil || !res.ifunc {
		return res.addr, res.isFunc, res.err
	}
	if a, ok := r.ifunc[res.addr]; ok {
		return a, true, nil
	}
	if r.pr == nil {
		return 0, false, fmt.Errorf("symbol %q is an IFUNC and the process is not stopped", name)
	}
	impl, err := r.pr.Call(res.addr)
	if err != nil {
		return 0, false, fmt.Errorf("resolve IFUNC %q: %w", name, err)
	}
	if r.ifunc == nil {
		r.ifunc = map[uint64]uint64{}
	}
	r.ifunc[res.addr] = impl
	return impl, true, nil
}

// lookup finds a target symbol: a self-contained patch's recorded offset, else (for a
// hand-written patch) the target ELF's symtab; then the target's PLT for functions, so
// that calls keep the process's own symbol binding; then every other mapped ELF's
// dynsym. A self-contained patch never searches the target's own symbol tables: what
// the builder did not resolve is not defined in the target.
func (r *resolver) lookup(name string, pos uint64) resolved {
	if name == shadowSymbol && pos == 0 {
		return resolved{shadow: true}
	}
	if r.obj.SelfContained() {
		if off, ok := r.obj.SymbolOffset(patchobj.TargetSym{Name: name, Pos: pos}); ok {
			if !r.tgt.elf.Covers(off.Value, off.Size, false) {
				return resolved{err: fmt.Errorf("symbol %q: recorded offset %#x (%d bytes) is outside the loaded segments of %s: the patch does not fit this binary",
					name, off.Value, off.Size, r.tgt.path)}
			}
			if off.Type == elf.STT_OBJECT && pos == 0 {
				if a, ok := r.boundData(name); ok {
					return resolved{addr: a}
				}
			}
			return resolved{addr: r.tgt.bias + off.Value, isFunc: isFuncType(off.Type), ifunc: off.Type == elf.STT_GNU_IFUNC}
		}
		return r.dynamic(name, pos)
	}
	s, err := r.tgt.elf.Lookup(name, pos)
	if err == nil && s.Section != elf.SHN_UNDEF && s.Type != elf.STT_TLS {
		if s.Section == elf.SHN_ABS {
			return resolved{addr: s.Value}
		}
		if s.Type == elf.STT_OBJECT && pos == 0 {
			if a, ok := r.boundData(name); ok {
				return resolved{addr: a}
			}
		}
		return resolved{addr: r.tgt.bias + s.Value, isFunc: isFuncType(s.Type), ifunc: s.Type == elf.STT_GNU_IFUNC}
	}
	if err != nil && !errors.Is(err, symbols.ErrNotFound) {
		return resolved{err: err}
	}
	return r.dynamic(name, pos)
}

// boundData returns where a shared library's exported variable really is in the
// process: the library reaches its own exported data through a GOT slot, which the
// dynamic linker fills with the executable's copy when the executable copied the
// variable (a copy relocation), or with another definition that interposes. The
// patch must use what the library uses. ok is false for an executable target and for
// a variable the library reaches directly.
func (r *resolver) boundData(name string) (uint64, bool) {
	if r.tgt.elf.Type != elf.ET_DYN || r.isMainExe() {
		return 0, false
	}
	slot, ok := r.tgt.elf.GOT(name)
	if !ok {
		return 0, false
	}
	a, err := r.readWord(r.tgt.bias + slot)
	return a, err == nil && a != 0
}

// readWord reads a GOT slot of the process, which the dynamic linker filled: through
// the stopped process when there is one, else without stopping it.
func (r *resolver) readWord(addr uint64) (uint64, error) {
	var b [8]byte
	var mem interface{ ReadMem(uint64, []byte) error } = ptrace.Remote{Pid: r.pid}
	if r.pr != nil {
		mem = r.pr
	}
	if err := mem.ReadMem(addr, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// dynamic finds a symbol the target does not define: its PLT entry, else the
// definition a mapped library exports.
func (r *resolver) dynamic(name string, pos uint64) resolved {
	if pos != 0 {
		return resolved{err: fmt.Errorf("symbol %q (position %d): %w in %s", name, pos, symbols.ErrNotFound, r.tgt.path)}
	}
	if plt, ok := r.tgt.elf.PLT(name); ok {
		return resolved{addr: r.tgt.bias + plt, isFunc: true}
	}
	r.loadLibs()
	for _, l := range r.libs {
		if s, ok := l.elf.Dynamic(name); ok {
			return resolved{addr: l.bias + s.Value, isFunc: isFuncType(s.Type), ifunc: s.Type == elf.STT_GNU_IFUNC}
		}
	}
	notFound := fmt.Errorf("symbol %q: %w in %s or the libraries it maps", name, symbols.ErrNotFound, r.tgt.path)
	return resolved{err: fmt.Errorf("%w%s", notFound, debugHint(r.tgt.elf, r.tgt.path, notFound))}
}

func isFuncType(t elf.SymType) bool { return t == elf.STT_FUNC || t == elf.STT_GNU_IFUNC }

// TLSOffset resolves a thread-local variable of the executable, for the static TLS
// models (TPOFF32, GOTTPOFF) that code of an executable uses.
func (r *resolver) TLSOffset(name string, pos uint64) (int64, error) {
	if r.tgt.elf.Type != elf.ET_EXEC && !r.isMainExe() {
		return 0, fmt.Errorf("TLS variable %q: the static TLS models reach only the executable's variables; "+
			"code of a shared library reaches its own through __tls_get_addr (TLSGD, TLSLD), as -fPIC compiles it", name)
	}
	s, err := r.tlsVar(name, pos)
	if err != nil {
		return 0, err
	}
	return r.tgt.elf.TPOffset(s)
}

// TLSModule resolves a thread-local variable for the dynamic TLS models: the module id
// of the target (1 for the executable; for a library, what the dynamic linker wrote
// into the library's own GOT for its own TLS references) and the variable's offset in
// the module's block.
func (r *resolver) TLSModule(name string, pos uint64) (uint64, uint64, error) {
	s, err := r.tlsVar(name, pos)
	if err != nil {
		return 0, 0, err
	}
	if r.tgt.elf.Type == elf.ET_EXEC || r.isMainExe() {
		return 1, s.Value, nil
	}
	slot := r.tgt.elf.TLSModuleSlot
	if slot == 0 {
		return 0, 0, fmt.Errorf("TLS variable %q: %s has no reference to its own TLS module (R_X86_64_DTPMOD64) to learn its module id from", name, r.tgt.path)
	}
	mod, err := r.readWord(r.tgt.bias + slot)
	if err != nil {
		return 0, 0, fmt.Errorf("TLS module id of %s: %w", r.tgt.path, err)
	}
	if mod == 0 {
		return 0, 0, fmt.Errorf("TLS variable %q: the TLS module id of %s is not set in the process", name, r.tgt.path)
	}
	return mod, s.Value, nil
}

// tlsVar finds a thread-local variable of the target: its offset in the target's TLS
// block, from the patch's recorded offsets or, for a hand-written patch, the symtab.
func (r *resolver) tlsVar(name string, pos uint64) (symbols.Symbol, error) {
	if r.obj.SelfContained() {
		off, ok := r.obj.SymbolOffset(patchobj.TargetSym{Name: name, Pos: pos})
		if !ok {
			return symbols.Symbol{}, fmt.Errorf("TLS variable %q: %w: the patch records no offset for it", name, symbols.ErrNotFound)
		}
		if tls := r.tgt.elf.TLS; tls == nil || off.Value+off.Size > tls.Memsz {
			return symbols.Symbol{}, fmt.Errorf("TLS variable %q: recorded offset %#x (%d bytes) is outside the TLS block of %s: the patch does not fit this binary",
				name, off.Value, off.Size, r.tgt.path)
		}
		return symbols.Symbol{Name: name, Value: off.Value, Size: off.Size, Type: off.Type}, nil
	}
	s, err := r.tgt.elf.Lookup(name, pos)
	if err != nil {
		return symbols.Symbol{}, fmt.Errorf("TLS variable %q: %w", name, err)
	}
	if s.Type != elf.STT_TLS {
		return symbols.Symbol{}, fmt.Errorf("symbol %q is a %v symbol, not thread-local", name, s.Type)
	}
	return s, nil
}

func (r *resolver) isMainExe() bool {
	exe, err := proc.Exe(r.pid)
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == r.tgt.path
}

func (r *resolver) loadLibs() {
	if r.libs != nil {
		return
	}
	r.libs = []*lib{}
	seen := map[[2]uint64]bool{{r.tgt.dev, r.tgt.inode}: true}
	for _, m := range r.maps {
		if m.Offset != 0 || m.Inode == 0 || seen[[2]uint64{m.Dev, m.Inode}] || !strings.HasPrefix(m.Path, "/") {
			continue
		}
		seen[[2]uint64{m.Dev, m.Inode}] = true
		ef, err := r.e.elfs.Open(proc.MappedFile(r.pid, m))
		if err != nil {
			continue // not an ELF (locale archive, data files)
		}
		r.libs = append(r.libs, &lib{elf: ef, bias: m.Start - ef.MinVaddr})
	}
}
