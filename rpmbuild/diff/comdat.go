package diff

import (
	"bytes"
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// Vague linkage (C++ inline functions, in-class member functions, templates, and
// their vtables, typeinfo and static locals) puts a copy of the same definition into
// every object that uses it, each in a COMDAT group, and the linker keeps the first
// copy it meets. A changed function of such a group is patched like any other changed
// function, but only under conditions the differ alone cannot check, because they
// depend on the whole link: the builder proves which object's copy each binary kept,
// that every object of the link that inlined the old body is rebuilt (and so carries
// its changed callers in the patch), and lets exactly one object carry the replacement
// (Vague, Drop, VagueUses and SameCode are its tools). Data of vague linkage is never
// replaced: every binary holds its own instance, which running code already uses; an
// unchanged one is referenced in the target, a changed or new one is refused.

// vaguePrefixes are the manglings of the compiler-made data of a class: vtable, VTT,
// typeinfo and typeinfo name.
var vaguePrefixes = []string{"_ZTV", "_ZTT", "_ZTI", "_ZTS"}

// isVagueData tells the class data the compiler emits: vtables and typeinfo.
func isVagueData(name string) bool {
	for _, p := range vaguePrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func vagueDataKind(name string) string {
	switch {
	case strings.HasPrefix(name, "_ZTV"):
		return "vtable"
	case strings.HasPrefix(name, "_ZTT"):
		return "VTT"
	case strings.HasPrefix(name, "_ZTI"), strings.HasPrefix(name, "_ZTS"):
		return "typeinfo"
	case strings.HasPrefix(name, "_ZGV"):
		return "guard variable"
	case strings.HasPrefix(name, "_ZZ"):
		return "static local variable"
	}
	return "variable"
}

// isVagueVar tells a data section of a COMDAT group that holds a variable of vague
// linkage (a static local, its guard, a vtable, a template's static member): one
// instance per process, named by a non-local symbol. Anonymous read-only data of a group
// (a switch's jump table, an exception table) belongs to its function's code and
// travels with it; anonymous writable data does not exist in code gcc makes, and is
// refused all the same.
func isVagueVar(s *section) bool {
	if y := s.primary(); y != nil && y.bind != elf.STB_LOCAL {
		return true
	}
	return !readOnly(s)
}

// vagueDataError refuses a changed or new data member of a COMDAT group (or a changed
// vtable or typeinfo, which have vague linkage also outside a group).
func vagueDataError(p *object, s *section, name string) error {
	what := "changed"
	if s.status == New {
		what = "new"
	}
	kind := vagueDataKind(name)
	reason := fmt.Sprintf("%s %s %s of vague linkage (every object and the running binary hold their own instance; a patch cannot replace it)", what, kind, name)
	if kind == "vtable" || kind == "VTT" || kind == "typeinfo" {
		reason = fmt.Sprintf("%s %s %s (a class layout or virtual function change; running objects point at the old one)", what, kind, name)
	}
	return &UnpatchableError{Function: funcNames(users(p, s)), Section: s.name, Reason: reason}
}

// verifyGroup accepts a COMDAT group whose members changed only in code: added or
// removed code sections (a cold part split off) are fine, added or removed data is not.
func verifyGroup(p *object, g *section) error {
	sig := p.groupSignature(g)
	check := func(ms []*section, other *section) error {
		for _, m := range interestingOnly(ms) {
			if m.twin != nil && other != nil && m.twin.group == other {
				continue
			}
			if m.exec() {
				continue
			}
			name := m.name
			if y := m.primary(); y != nil {
				name = y.name
			}
			return &UnpatchableError{Function: sig, Section: m.name,
				Reason: fmt.Sprintf("COMDAT group %s gained or lost data %s (vague-linkage data cannot be added to or removed from a running binary)", sig, name)}
		}
		return nil
	}
	if err := check(g.members, g.twin); err != nil {
		return err
	}
	if g.twin != nil {
		return check(g.twin.members, g)
	}
	return nil
}

// Vague returns the changed functions (names in the original) that have vague linkage:
// members of a COMDAT group, of which other objects of the link may hold copies.
func (r *Result) Vague() []string {
	var out []string
	for _, s := range r.patched.secs {
		if !s.interesting() || !s.exec() || s.group == nil || s.status != Changed {
			continue
		}
		if f := s.primary(); f != nil && f.twin != nil && f.typ == elf.STT_FUNC && !isCold(f.name) {
			out = append(out, f.twin.name)
		}
	}
	sort.Strings(out)
	return out
}

// Drop leaves the changed vague-linkage function name out of the emitted patch
// object, with the code sections of its group: another object of the same link
// carries its replacement. References to it from the code this object still carries
// bind by name, to that replacement when the fragments are linked together, or else
// to the target's definition. It reports whether name was a changed vague function.
func (r *Result) Drop(name string) bool {
	dropped := false
	for _, s := range r.patched.secs {
		if !s.interesting() || !s.exec() || s.group == nil || s.status != Changed {
			continue
		}
		f := s.primary()
		if f == nil || f.twin == nil || f.twin.name != name {
			continue
		}
		for _, m := range s.group.members {
			if m.exec() {
				m.include = false
			}
		}
		dropped = true
	}
	if !dropped {
		return false
	}
	var keep []string
	for _, n := range r.changed {
		if n != name {
			keep = append(keep, n)
		}
	}
	r.changed = keep
	r.Included = r.Included[:0]
	for _, s := range r.patched.secs {
		if s.include {
			r.Included = append(r.Included, s.name)
		}
	}
	sort.Strings(r.Included)
	return true
}

// VagueUse is what one object holds of a vague-linkage function.
type VagueUse struct {
	// Defines: the object has its own out-of-line copy.
	Defines bool
}

// VagueUses tells, for each of names (mangled function names), whether the relocatable
// object obj defines its own copy. Names the object does not define are absent.
// (Inlined copies are InlinedFrom's.)
func VagueUses(obj io.ReaderAt, names []string) (map[string]VagueUse, error) {
	x, err := readObject(obj, "linked")
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]VagueUse{}
	for _, y := range x.syms {
		if want[y.name] && y.defined() && y.typ == elf.STT_FUNC {
			out[y.name] = VagueUse{Defines: true}
		}
	}
	return out, nil
}

// SameCode tells whether code, the bytes of a function in a linked binary, is the
// function name of the relocatable object obj as the linker placed it: the same size
// and the same bytes outside the fields the linker fills in (relocations, and the
// opcode bytes before a GOT access it may relax). It is how the builder proves which
// object's COMDAT copy a binary kept.
func SameCode(code []byte, obj io.ReaderAt, name string) (bool, error) {
	x, err := readObject(obj, "linked")
	if err != nil {
		return false, err
	}
	for _, y := range x.syms {
		if y.name != name || !y.defined() || y.typ != elf.STT_FUNC || y.sec == nil {
			continue
		}
		s := y.sec
		if y.value+y.size > uint64(len(s.data)) {
			return false, fmt.Errorf("symbol %s: outside its section %s", name, s.name)
		}
		if uint64(len(code)) != y.size {
			return false, nil
		}
		mine := append([]byte(nil), s.data[y.value:y.value+y.size]...)
		theirs := append([]byte(nil), code...)
		mask := func(from, to uint64) {
			for i := from; i < to && i < uint64(len(mine)); i++ {
				mine[i], theirs[i] = 0, 0
			}
		}
		for _, rl := range s.relas {
			if rl.off < y.value || rl.off >= y.value+y.size {
				continue
			}
			at := rl.off - y.value
			from := at
			switch rl.typ {
			case elf.R_X86_64_GOTPCRELX, elf.R_X86_64_REX_GOTPCRELX, elf.R_X86_64_GOTPCREL,
				elf.R_X86_64_GOTTPOFF, elf.R_X86_64_TLSGD, elf.R_X86_64_TLSLD:
				// mov foo@GOTPCREL(%rip) may become lea, call *foo@GOTPCREL a nop+call.
				from = max(at, 3) - 3
			}
			mask(from, at+relocSize(rl.typ))
		}
		return bytes.Equal(mine, theirs), nil
	}
	return false, nil
}

// InlinedCopy is a function body compiled into another function of an object.
type InlinedCopy struct {
	Func   string // the inlined function (mangled when DWARF has the linkage name)
	File   string // the file that declares it, as the object's DWARF names it
	Caller string // the function of the object that holds the copy
}

// FileUse is what an object holds of the files a fix changes.
type FileUse struct {
	// Files are the changed files its DWARF line tables name: it was compiled with them.
	Files []string
	// Inlined are its inlined copies of functions declared in them (inline functions,
	// in-class member functions, templates).
	Inlined []InlinedCopy
	// NoDWARF: the object has no debug information, so nothing is known.
	NoDWARF bool
}

// FileUses tells whether the relocatable object obj was compiled with a file that
// changed accepts (a header the fix changes), and which functions of it it inlined,
// from its DWARF. Compile units whose line tables name no such file are skipped.
func FileUses(obj io.ReaderAt, changed func(file string) bool) (FileUse, error) {
	x, err := readObject(obj, "linked")
	if err != nil {
		return FileUse{}, err
	}
	var u FileUse
	err = elfsafe.Guard("read DWARF", func() error {
		d, err := x.elf.DWARF()
		if err != nil {
			u.NoDWARF = true
			return nil
		}
		u, err = fileUses(d, changed)
		return err
	})
	return u, err
}

func fileUses(d *dwarf.Data, changed func(string) bool) (FileUse, error) {
	type die struct {
		name string
		file string
		ref  dwarf.Offset // specification or abstract origin
	}
	dies := map[dwarf.Offset]*die{}
	type site struct{ origin, caller dwarf.Offset }
	var sites []site
	r := d.Reader()
	var files []*dwarf.LineFile
	relevant := false
	named := map[string]bool{}
	var top dwarf.Offset // the CU-level (or class-level) subprogram being read
	depth, topDepth := 0, -1
	for n := 0; ; n++ {
		if n > 50_000_000 {
			return FileUse{}, fmt.Errorf("DWARF too large")
		}
		e, err := r.Next()
		if err != nil {
			return FileUse{}, err
		}
		if e == nil {
			break
		}
		if e.Tag == 0 {
			depth--
			if depth <= topDepth {
				topDepth, top = -1, 0
			}
			continue
		}
		if e.Tag == dwarf.TagCompileUnit {
			files, relevant = nil, false
			if lr, err := d.LineReader(e); err == nil && lr != nil {
				files = lr.Files()
				for _, f := range files {
					if f != nil && changed(f.Name) {
						relevant = true
						named[f.Name] = true
					}
				}
			}
			if !relevant {
				r.SkipChildren()
				continue
			}
		}
		switch e.Tag {
		case dwarf.TagSubprogram:
			dd := &die{name: stringVal(e, dwarf.AttrLinkageName)}
			if dd.name == "" {
				dd.name = stringVal(e, dwarf.AttrName)
			}
			if i, ok := e.Val(dwarf.AttrDeclFile).(int64); ok && i >= 0 && int(i) < len(files) && files[i] != nil {
				dd.file = files[i].Name
			}
			for _, a := range []dwarf.Attr{dwarf.AttrSpecification, dwarf.AttrAbstractOrigin} {
				if o, ok := e.Val(a).(dwarf.Offset); ok {
					dd.ref = o
				}
			}
			dies[e.Offset] = dd
			if topDepth < 0 && e.Val(dwarf.AttrLowpc) != nil || topDepth < 0 && e.Val(dwarf.AttrRanges) != nil {
				top, topDepth = e.Offset, depth
			}
		case dwarf.TagInlinedSubroutine:
			if o, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); ok && top != 0 {
				sites = append(sites, site{o, top})
			}
		}
		if e.Children {
			depth++
		}
	}
	resolve := func(off dwarf.Offset) (name, file string) {
		for i := 0; i < 8 && off != 0; i++ {
			dd := dies[off]
			if dd == nil {
				break
			}
			if name == "" {
				name = dd.name
			}
			if file == "" {
				file = dd.file
			}
			off = dd.ref
		}
		return name, file
	}
	var u FileUse
	for f := range named {
		u.Files = append(u.Files, f)
	}
	sort.Strings(u.Files)
	seen := map[InlinedCopy]bool{}
	var out []InlinedCopy
	for _, s := range sites {
		name, file := resolve(s.origin)
		if file == "" || !changed(file) {
			continue
		}
		caller, _ := resolve(s.caller)
		c := InlinedCopy{Func: name, File: file, Caller: caller}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Func != out[j].Func {
			return out[i].Func < out[j].Func
		}
		return out[i].Caller < out[j].Caller
	})
	u.Inlined = out
	return u, nil
}

// LinkedObject is one object of a final link, as CheckInliners sees it.
type LinkedObject struct {
	Name string
	// Rebuilt: the fix compiles it again, so its changed callers are in the patch.
	Rebuilt bool
	// Recorded: the build compiled it (false: shipped prebuilt or made by a tool the
	// capture does not see).
	Recorded bool
	Use      FileUse
}

// CheckInliners refuses when an object of the link that the fix does not rebuild was
// compiled with a file the fix changes: what it inlined from there (inline functions,
// in-class members, templates, macros) stays the old code in the running binary, out
// of the patch's reach. The refusal names the object, and the inlined function, its
// file and its caller when the DWARF shows one.
func CheckInliners(objs []LinkedObject) error {
	for _, o := range objs {
		if o.Rebuilt || len(o.Use.Files) == 0 {
			continue
		}
		why := "it is not rebuilt by the fix"
		if !o.Recorded {
			why = "the recorded build did not compile it"
		}
		if len(o.Use.Inlined) > 0 {
			c := o.Use.Inlined[0]
			return &UnpatchableError{Function: c.Func, Section: "-", Reason: fmt.Sprintf(
				"%s (%s) is inlined into %s in %s, which the patch does not cover (%s)", c.Func, c.File, c.Caller, o.Name, why)}
		}
		return &UnpatchableError{Function: "-", Section: "-", Reason: fmt.Sprintf(
			"%s was compiled with the old %s, which the fix changes, and the patch does not cover it (%s)", o.Name, strings.Join(o.Use.Files, ", "), why)}
	}
	return nil
}
