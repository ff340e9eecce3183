// Package debuginfo maps the ELF files of a package to their shipped debug files and
// build-ids (from an unpacked -debuginfo RPM) and answers symbol-position and compiler
// questions from those debug files.
package debuginfo

import (
	"debug/dwarf"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchobj"
)

// ErrNotFound is wrapped when a symbol or target is not in the debuginfo.
var ErrNotFound = errors.New("not found in debuginfo")

// Target is one ELF file of the installed package.
type Target struct {
	// Path is the installed absolute path (/usr/bin/prog).
	Path string
	// BuildID is the GNU build-id of the shipped file, in lowercase hex.
	BuildID string
	// DebugFile is the debug file's path in the unpacked tree.
	DebugFile string
	// Package is the debuginfo package name's base (the package that ships Path).
	Package string
}

// Index lists the targets found in unpacked debuginfo trees.
type Index struct {
	Targets []Target
}

const debugRoot = "usr/lib/debug"

// Load reads the unpacked debuginfo tree root: each /usr/lib/debug/.build-id/xx/yyyy.debug
// link names a shipped ELF's build-id and debug file; the debug file's own name gives
// the installed path. The build-id is taken from the debug file's note, never from the
// link name alone, and never from a rebuild.
func Load(root, pkg string) (*Index, error) {
	links, err := filepath.Glob(filepath.Join(root, debugRoot, ".build-id", "*", "*.debug"))
	if err != nil {
		return nil, err
	}
	ix := &Index{}
	seen := map[string]bool{}
	for _, l := range links {
		dst, err := os.Readlink(l)
		if err != nil {
			continue
		}
		if !filepath.IsAbs(dst) {
			dst = filepath.Join(filepath.Dir(l), dst)
		}
		dst = filepath.Clean(dst)
		if seen[dst] {
			continue
		}
		seen[dst] = true
		rel, err := filepath.Rel(filepath.Join(root, debugRoot), dst)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		id, err := BuildID(dst)
		if err != nil {
			return nil, err
		}
		ix.Targets = append(ix.Targets, Target{Path: installedPath(rel), BuildID: id, DebugFile: dst, Package: pkg})
	}
	sort.Slice(ix.Targets, func(i, j int) bool { return ix.Targets[i].Path < ix.Targets[j].Path })
	return ix, nil
}

// rpm names debug files <path>-<version>-<release>.<arch>.debug (4.14+) or <path>.debug.
var nvraSuffix = regexp.MustCompile(`-[^-/]+-[^-/]+\.[a-z0-9_]+\.debug$`)

func installedPath(rel string) string {
	p := "/" + rel
	if nvraSuffix.MatchString(p) {
		return nvraSuffix.ReplaceAllString(p, "")
	}
	return strings.TrimSuffix(p, ".debug")
}

// BuildID returns the GNU build-id of the ELF file at path, in lowercase hex.
func BuildID(path string) (string, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return "", fmt.Errorf("debug file: %w", err)
	}
	defer f.Close()
	id, err := elfsafe.BuildID(f.File)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if id == nil {
		return "", fmt.Errorf("%s has no GNU build-id note", path)
	}
	return hex.EncodeToString(id), nil
}

// Merge adds the targets of another index.
func (ix *Index) Merge(o *Index) { ix.Targets = append(ix.Targets, o.Targets...) }

// Match finds the installed target for an ELF file the build linked. Candidates are the
// targets with the same file name; when several share it, the one whose function names
// overlap most with the built file's wins.
func (ix *Index) Match(built string) (*Target, error) {
	var cands []*Target
	for i := range ix.Targets {
		if filepath.Base(ix.Targets[i].Path) == filepath.Base(built) {
			cands = append(cands, &ix.Targets[i])
		}
	}
	switch len(cands) {
	case 0:
		return nil, fmt.Errorf("%s: %w", filepath.Base(built), ErrNotFound)
	case 1:
		return cands[0], nil
	}
	mine, err := funcNames(built)
	if err != nil {
		return nil, err
	}
	best, bestN := cands[0], -1
	for _, c := range cands {
		theirs, err := funcNames(c.DebugFile)
		if err != nil {
			return nil, err
		}
		n := 0
		for name := range mine {
			if theirs[name] {
				n++
			}
		}
		if n > bestN {
			best, bestN = c, n
		}
	}
	return best, nil
}

func funcNames(path string) (map[string]bool, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := elfsafe.Symbols(f.File)
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m := map[string]bool{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Section != elf.SHN_UNDEF {
			m[s.Name] = true
		}
	}
	return m, nil
}

// Producers returns the distinct DW_AT_producer strings of the C and C++ compile units
// of a debug file ("GNU C17 12.2.0 -mtune=generic -O2 ...").
func Producers(path string) ([]string, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	err = elfsafe.Guard("read DWARF of "+path, func() error {
		d, err := f.DWARF()
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		r := d.Reader()
		for {
			e, err := r.Next()
			if err != nil {
				return err
			}
			if e == nil {
				return nil
			}
			if e.Tag == dwarf.TagCompileUnit || e.Tag == dwarf.TagPartialUnit {
				if p, ok := e.Val(dwarf.AttrProducer).(string); ok && !seen[p] && !strings.HasPrefix(p, "GNU AS") {
					seen[p] = true
					out = append(out, p)
				}
			}
			r.SkipChildren()
		}
	})
	return out, err
}

var producerVersion = regexp.MustCompile(`^GNU [A-Za-z+0-9]+ ([0-9]+(\.[0-9]+)*)`)

// ProducerVersion extracts the compiler version from a GNU producer string ("" if none).
func ProducerVersion(p string) string {
	m := producerVersion.FindStringSubmatch(p)
	if m == nil {
		return ""
	}
	return m[1]
}

// Locator answers symbol questions from a debug file's .symtab, with the rules the
// loader applies: a position is the N-th defined symbol of that name in .symtab order
// (function symbols only for functions), and a local symbol is told apart by the
// STT_FILE symbol that precedes it. It also tells where each symbol lies, so that the
// patch can carry the offsets and apply on a host without the debuginfo.
type Locator struct {
	syms []locSym
	// imported names the symbols the target takes from other ELF files (undefined
	// entries of its .symtab).
	imported map[string]bool
	// starts lists, per section index, the sorted addresses where symbols begin.
	starts map[elf.SectionIndex][]uint64
	// ends holds where each section ends: the room of a function stops there too.
	ends map[elf.SectionIndex]uint64
}

type locSym struct {
	name, file string
	fn, local  bool
	value      uint64
	size       uint64
	typ        elf.SymType
	shndx      elf.SectionIndex
}

// maxJump is the longest jump the loader writes at a replaced function (a 14-byte
// absolute jump); a function shorter than that may borrow the padding after it, of
// which the loader reads up to roomCap bytes from the function's start (enough to
// decode an 11-byte NOP that follows a 4-byte function).
const (
	maxJump = 14
	roomCap = 16
)

// NewLocator reads the symbol table of a debug file.
func NewLocator(debugFile string) (*Locator, error) {
	f, err := elfsafe.Open(debugFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := elfsafe.Symbols(f.File)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", debugFile, err)
	}
	l := &Locator{imported: map[string]bool{}, starts: map[elf.SectionIndex][]uint64{}, ends: map[elf.SectionIndex]uint64{}}
	for i, sec := range f.Sections {
		l.ends[elf.SectionIndex(i)] = sec.Addr + sec.Size
	}
	file := ""
	for _, s := range syms {
		typ, bind := elf.ST_TYPE(s.Info), elf.ST_BIND(s.Info)
		if typ == elf.STT_FILE {
			file = s.Name
			continue
		}
		if s.Section == elf.SHN_UNDEF {
			if s.Name != "" {
				l.imported[baseName(s.Name)] = true
			}
			continue
		}
		if typ == elf.STT_SECTION {
			continue
		}
		l.syms = append(l.syms, locSym{name: s.Name, file: file,
			fn: typ == elf.STT_FUNC || typ == elf.STT_GNU_IFUNC, local: bind == elf.STB_LOCAL,
			value: s.Value, size: s.Size, typ: typ, shndx: s.Section})
		if s.Section < elf.SHN_LORESERVE {
			l.starts[s.Section] = append(l.starts[s.Section], s.Value)
		}
	}
	for _, v := range l.starts {
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	}
	return l, nil
}

// baseName strips a symbol version ("memcpy@@GLIBC_2.14" -> "memcpy").
func baseName(name string) string {
	if i := strings.IndexByte(name, '@'); i > 0 {
		return name[:i]
	}
	return name
}

// offset tells where s lies. A function's Room is its size, or up to the next symbol
// of its section (or the section's end) when it is shorter than the longest jump (the
// loader checks that those bytes are padding).
func (l *Locator) offset(s locSym) (patchobj.Offset, error) {
	if s.shndx == elf.SHN_ABS {
		return patchobj.Offset{}, fmt.Errorf("symbol %q is absolute (SHN_ABS): it has no address in the target", s.name)
	}
	out := patchobj.Offset{Value: s.value, Size: s.size, Type: s.typ}
	if s.fn {
		out.Room = s.size
		if s.size < maxJump {
			next := s.value + roomCap
			if end, ok := l.ends[s.shndx]; ok && end > s.value {
				next = min(next, end)
			}
			starts := l.starts[s.shndx]
			i := sort.Search(len(starts), func(i int) bool { return starts[i] > s.value })
			if i < len(starts) && starts[i] < next {
				next = starts[i]
			}
			out.Room = max(s.size, next-s.value)
		}
	}
	return out, nil
}

// Symbol returns the symbol name at position pos, counted as Pos counts (0: the name
// is unique).
func (l *Locator) Symbol(name string, pos uint64, isFunc bool) (patchobj.Offset, error) {
	var found []locSym
	for _, s := range l.syms {
		if s.name == name && (!isFunc || s.fn) {
			found = append(found, s)
		}
	}
	switch {
	case len(found) == 0:
		return patchobj.Offset{}, fmt.Errorf("symbol %q: %w", name, ErrNotFound)
	case pos == 0 && len(found) > 1:
		return patchobj.Offset{}, fmt.Errorf("symbol %q: %d symbols of that name and no position", name, len(found))
	case pos > uint64(len(found)):
		return patchobj.Offset{}, fmt.Errorf("symbol %q at position %d: %w (%d of that name)", name, pos, ErrNotFound, len(found))
	case pos == 0:
		return l.offset(found[0])
	}
	return l.offset(found[pos-1])
}

// Global returns the definition that a reference by name from another file of the
// target binds to, as the linker bound it: the one global (or weak) definition, the
// default version among versioned ones; failing that, a single local definition (a
// global of hidden visibility is local in the linked file) unless the target imports
// the name. ok is false when the target does not define the name: the loader then
// finds it in the libraries the process maps.
func (l *Locator) Global(name string) (off patchobj.Offset, ok bool, err error) {
	var global, local []locSym
	for _, s := range l.syms {
		if baseName(s.name) != baseName(name) {
			continue
		}
		if s.local {
			if s.name == name {
				local = append(local, s)
			}
			continue
		}
		global = append(global, s)
	}
	if len(global) > 1 {
		// name@@VER is what an unversioned reference binds to; name@VER is not.
		var def []locSym
		for _, s := range global {
			if s.name == name || strings.HasPrefix(s.name, name+"@@") {
				def = append(def, s)
			}
		}
		if len(def) > 0 {
			global = def
		}
	}
	switch {
	case len(global) == 1:
		off, err := l.offset(global[0])
		return off, err == nil, err
	case len(global) > 1:
		for _, s := range global[1:] {
			if s.value != global[0].value || s.typ != global[0].typ {
				return patchobj.Offset{}, false, fmt.Errorf("symbol %q: %d global definitions", name, len(global))
			}
		}
		off, err := l.offset(global[0])
		return off, err == nil, err
	case l.imported[baseName(name)] || len(local) == 0:
		return patchobj.Offset{}, false, nil
	case len(local) > 1:
		return patchobj.Offset{}, false, fmt.Errorf("symbol %q: no global definition and %d local ones", name, len(local))
	}
	off, err = l.offset(local[0])
	return off, err == nil, err
}

// Pos returns the position of the local symbol name of source file file among the
// same-named symbols (0 when the name is unique).
func (l *Locator) Pos(name, file string, isFunc bool) (uint64, error) {
	var n uint64
	var exact, base []uint64
	for _, s := range l.syms {
		if s.name != name || (isFunc && !s.fn) {
			continue
		}
		n++
		if !s.local {
			continue
		}
		switch {
		case sameFile(s.file, file):
			exact = append(exact, n)
		case s.file != "" && filepath.Base(s.file) == filepath.Base(file):
			base = append(base, n)
		}
	}
	if len(exact) == 0 {
		exact = base
	}
	switch {
	case n == 0:
		return 0, fmt.Errorf("symbol %q: %w", name, ErrNotFound)
	case n == 1:
		return 0, nil
	case len(exact) == 0:
		return 0, fmt.Errorf("symbol %q of %s: %w (%d symbols of that name, none from that file)", name, file, ErrNotFound, n)
	case len(exact) > 1:
		return 0, fmt.Errorf("symbol %q of %s: %d local symbols of that name from files of that name", name, file, len(exact))
	}
	return exact[0], nil
}

// sameFile compares an STT_FILE name with a source path: gcc writes the name as given
// on its command line, so compare from the right, by path components.
func sameFile(sym, src string) bool {
	if sym == "" || src == "" {
		return false
	}
	a, b := filepath.Clean(sym), filepath.Clean(src)
	return a == b || strings.HasSuffix(b, "/"+a) || strings.HasSuffix(a, "/"+b)
}
