// Package diff compares an original and a patched relocatable object, kpatch
// create-diff-object style, and emits a SysCare patch object (runtime/patchobj).
//
// The pipeline is correlate -> compare -> include -> verify -> emit:
//
//   - correlate pairs every section and symbol of the patched object with its twin in
//     the original, seeing through gcc's renumbered names (static locals "calls.1",
//     clones ".isra.N", ".constprop.N", ".part.N", cold parts ".cold");
//   - compare classifies each as SAME, CHANGED or NEW from the bytes with relocations
//     normalised (target symbol and addend, string literals and merged constants by
//     content, so that a new string elsewhere does not move the others);
//   - include takes the changed and new functions and what they need (strings,
//     anonymous read-only data, new variables, cold parts) and leaves everything else
//     as undefined symbols resolved in the target;
//   - verify refuses what a running process cannot take (see UnpatchableError): changed
//     initial values of writable data, new or changed thread-local variables, changed
//     ifuncs and COMDAT groups, relocations the loader does not take; then a DWARF
//     safety analysis (safety.go) refuses layout changes of the types and variables
//     the new code touches and signature changes whose callers are left out;
//   - emit writes the patch object with a small ELF writer.
//
// Result.String is the classification dump; Result.Report is the patch report
// (reasons each function is in, line-only functions left out, warnings about
// constructors and main), which MergeReports joins per target ELF.
//
// # Line numbers
//
// A line inserted above a function moves every __LINE__ below it: the code of a
// function whose assert or log macro passes its line number differs only in an
// immediate operand. Such a function counts as SAME (reported as line-only) when its
// code decodes, instruction by instruction, to the same instructions except for
// immediates whose old and new values are the same source line before and after the
// edit. That line map comes from the DWARF of both objects: every subprogram present
// in both gives an anchor (old decl_line -> new decl_line), and a line between two
// anchors moves by the shift of the anchor above it. A real change of a constant that
// happens to equal a line inside a moved function would be missed only if it also
// changed by exactly that function's shift.
package diff

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/patchobj"
)

// ErrNoChange is returned when the patched object differs from the original in no
// way that a hot patch would carry.
var ErrNoChange = errors.New("no functional change")

// UnpatchableError says why a change cannot be applied to a running process.
type UnpatchableError struct {
	Function string // the function concerned, or the functions that use the data
	Section  string
	Reason   string
}

func (e *UnpatchableError) Error() string {
	fn := e.Function
	if fn == "" {
		fn = "(none)"
	}
	return fmt.Sprintf("cannot be hot patched: function %s, section %s: %s", fn, e.Section, e.Reason)
}

// Locator tells the position of a local symbol among the same-named symbols of the
// target ELF's .symtab.
type Locator interface {
	// Pos tells, for a LOCAL symbol of the original object's source file `file`
	// (STT_FILE), its 1-based position among the same-named symbols of the target
	// ELF's .symtab, or 0 when the name is unique there.
	Pos(name, file string, isFunc bool) (uint64, error)
}

// Resolver tells where the target ELF's symbols lie (from its debuginfo), so that the
// patch records their offsets and needs no debuginfo on the host.
type Resolver interface {
	// Symbol tells where the symbol at position pos (as Locator.Pos counts) lies.
	Symbol(name string, pos uint64, isFunc bool) (patchobj.Offset, error)
	// Global tells where the definition a by-name reference binds to lies; ok is false
	// when the target does not define name (a library of the process does).
	Global(name string) (off patchobj.Offset, ok bool, err error)
}

// Options tune Diff.
type Options struct {
	// Locator finds positions of local symbols; nil gives every position 0.
	Locator Locator
	// Resolver resolves the target's symbols at build time: with it the emitted object
	// is self-contained (it carries .upatch.offsets); nil leaves every target symbol to
	// a lookup by name when the patch is loaded (as a hand-written patch does).
	Resolver Resolver
	// Tables are sections of fixed-size entries that index code (the kernel's
	// exception table, alternatives, static keys...): they are left out of the
	// comparison, and the patch object carries the entries of the code it carries.
	Tables []Table
	// Owned are sections of records the code points at that the patch carries whole,
	// as its own, when carried code references them, and that are not compared (the
	// kernel's pr_debug descriptors, __dyndbg: they hold line numbers, which a fix
	// moves for the unchanged functions too).
	Owned []string
	// AliasPrefix is prepended to the names of local symbols of the original that the
	// patch references; it must be unique per object so that objects of several
	// translation units can be merged with `ld -r`. Empty: derived from the file name.
	AliasPrefix string
}

// Status classifies a section or symbol of the patched object.
type Status int

// The classifications. Removed marks what exists only in the original.
const (
	Same Status = iota
	Changed
	New
	Removed
)

func (s Status) String() string {
	switch s {
	case Same:
		return "SAME"
	case Changed:
		return "CHANGED"
	case New:
		return "NEW"
	case Removed:
		return "REMOVED"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Entry is the classification of one section or symbol.
type Entry struct {
	Kind   string // "section", "func", "object", "tls", "ifunc", "notype"
	Name   string // name in the patched object (the original's for Removed)
	Old    string // name in the original when it differs (renumbered statics, clones)
	Status Status
	Note   string // e.g. "line numbers only", "included: uses changed read-only data"
}

// Result is the outcome of Diff.
type Result struct {
	File     string // the source file of the translation unit
	Sections []Entry
	Symbols  []Entry
	// Included lists the sections the patch object carries.
	Included []string
	// LineOnly lists functions whose only difference is moved line numbers.
	LineOnly []string
	// Warnings are changes that are applied but deserve a look (constructors, main).
	Warnings []string

	changed, added []string
	inlines        map[string][]string // function -> functions inlined into it (DWARF)
	orig, patched  *object
	opts           Options
}

// Diff compares the original and the patched object of one translation unit.
// It returns ErrNoChange or an *UnpatchableError for the two distinct outcomes.
func Diff(orig, patched io.ReaderAt, opts Options) (*Result, error) {
	tables := opts.tableSections()
	o, err := readObjectTables(orig, "original", tables)
	if err != nil {
		return nil, err
	}
	p, err := readObjectTables(patched, "patched", tables)
	if err != nil {
		return nil, err
	}
	o.other, p.other = p, o
	p.patched = true
	r := &Result{File: o.file, orig: o, patched: p, opts: opts}
	if r.File == "" {
		r.File = p.file
	}
	correlate(o, p)
	lm := buildLineMap(o, p)
	compare(o, p, lm)
	if err := propagate(o, p); err != nil {
		return nil, err
	}
	if err := verify(o, p); err != nil {
		return nil, err
	}
	r.classify()
	if len(r.changed) == 0 && !r.hasNewGlobals() {
		return r, ErrNoChange
	}
	if err := include(r); err != nil {
		return nil, err
	}
	if err := safety(r); err != nil {
		return nil, err
	}
	return r, nil
}

// Changed returns the replaced functions (names in the original), sorted.
func (r *Result) Changed() []string { return append([]string(nil), r.changed...) }

// New returns the functions that exist only in the patched object, sorted.
func (r *Result) New() []string { return append([]string(nil), r.added...) }

func (r *Result) hasNewGlobals() bool {
	for _, y := range r.patched.syms {
		if y.twin == nil && y.defined() && y.named() && y.bind != 0 && y.sec != nil && y.sec.alloc() {
			return true
		}
	}
	return false
}

// classify fills the public lists from the internal state.
func (r *Result) classify() {
	o, p := r.orig, r.patched
	for _, s := range p.secs {
		if !s.interesting() {
			continue
		}
		e := Entry{Kind: "section", Name: s.name, Status: s.status}
		if s.twin != nil && s.twin.name != s.name {
			e.Old = s.twin.name
		}
		e.Note = s.note()
		r.Sections = append(r.Sections, e)
	}
	for _, s := range o.secs {
		if s.interesting() && s.twin == nil {
			r.Sections = append(r.Sections, Entry{Kind: "section", Name: s.name, Status: Removed})
		}
	}
	seenFunc := map[*section]bool{}
	for _, y := range p.syms {
		if !y.defined() || !y.named() || y.sec == nil {
			continue
		}
		e := Entry{Kind: y.kind(), Name: y.name, Status: y.status}
		if y.twin != nil && y.twin.name != y.name {
			e.Old = y.twin.name
		}
		r.Symbols = append(r.Symbols, e)
		if y.typ != elf.STT_FUNC || isCold(y.name) || seenFunc[y.sec] {
			continue
		}
		switch y.status {
		case Changed:
			seenFunc[y.sec] = true
			r.changed = append(r.changed, y.twin.name)
		case New:
			seenFunc[y.sec] = true
			r.added = append(r.added, y.name)
		case Same:
			if y.sec.lineOnly {
				r.LineOnly = append(r.LineOnly, y.name)
			}
		}
	}
	for _, y := range o.syms {
		if y.defined() && y.named() && y.sec != nil && y.twin == nil {
			r.Symbols = append(r.Symbols, Entry{Kind: y.kind(), Name: y.name, Status: Removed})
		}
	}
	sortEntries(r.Sections)
	sortEntries(r.Symbols)
	sort.Strings(r.changed)
	sort.Strings(r.added)
	sort.Strings(r.LineOnly)
	for _, name := range r.changed {
		if name == "main" || strings.HasPrefix(name, "main.") {
			r.Warnings = append(r.Warnings, fmt.Sprintf("function %s changed: running processes will not enter it again", name))
		}
	}
	for _, s := range p.secs {
		if s.interesting() && s.status != Same && isInitArray(s) {
			r.Warnings = append(r.Warnings, fmt.Sprintf("section %s %s: constructors do not run again in running processes", s.name, s.status))
		}
	}
	r.Warnings = append(r.Warnings, ctorWarnings(p)...)
}

func (s *section) note() string {
	switch {
	case s.lineOnly:
		return "line numbers only"
	case s.reason != "":
		return s.reason
	}
	return ""
}

func sortEntries(es []Entry) {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Name != es[j].Name {
			return es[i].Name < es[j].Name
		}
		return es[i].Kind < es[j].Kind
	})
}

// String renders the classification as text, one line per section and symbol, in a
// stable order: the dump `syscare-build diff` prints.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "file %s\n", r.File)
	line := func(e Entry) {
		fmt.Fprintf(&b, "%-7s %-7s %s", e.Status, e.Kind, e.Name)
		if e.Old != "" {
			fmt.Fprintf(&b, " (was %s)", e.Old)
		}
		if e.Note != "" {
			fmt.Fprintf(&b, " [%s]", e.Note)
		}
		b.WriteByte('\n')
	}
	for _, e := range r.Sections {
		line(e)
	}
	for _, e := range r.Symbols {
		line(e)
	}
	fmt.Fprintf(&b, "changed functions: %s\n", list(r.changed))
	fmt.Fprintf(&b, "new functions: %s\n", list(r.added))
	fmt.Fprintf(&b, "line-only functions: %s\n", list(r.LineOnly))
	for _, w := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, " ")
}
