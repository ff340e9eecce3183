package diff

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"sort"
	"strings"
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
	// InlinedInto names the object's functions into which the function was inlined.
	InlinedInto []string
}

// VagueUses tells, for each of names (mangled function names), whether the relocatable
// object obj defines its own copy and into which of its functions it was inlined
// (from the DWARF: an object built without debug information answers only the
// former). Names the object does not use are absent from the map.
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
			u := out[y.name]
			u.Defines = true
			out[y.name] = u
		}
	}
	if ix := readDWARF(x); ix != nil {
		for _, f := range ix.funcs {
			for _, in := range f.inlines {
				if want[in] && f.name != in {
					u := out[in]
					u.InlinedInto = append(u.InlinedInto, f.name)
					out[in] = u
				}
			}
		}
	}
	for n, u := range out {
		sort.Strings(u.InlinedInto)
		out[n] = u
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

// LinkedObject is one object of a final link, as CheckInliners sees it.
type LinkedObject struct {
	Name string
	// Rebuilt: the fix compiles it again, so its changed callers are in the patch.
	Rebuilt bool
	// Recorded: the build compiled it (false: shipped prebuilt or made by a tool the
	// capture does not see).
	Recorded bool
	Uses     map[string]VagueUse // from VagueUses
}

// CheckInliners refuses when an object of the link that the fix does not rebuild
// inlined one of the changed vague-linkage functions names: the patch would leave
// that caller running the old body. The refusal names the function, the caller and
// the object.
func CheckInliners(names []string, objs []LinkedObject) error {
	for _, o := range objs {
		if o.Rebuilt {
			continue
		}
		for _, n := range names {
			in := o.Uses[n].InlinedInto
			if len(in) == 0 {
				continue
			}
			why := "it is not rebuilt by the fix"
			if !o.Recorded {
				why = "the recorded build did not compile it"
			}
			return &UnpatchableError{Function: n, Section: "-", Reason: fmt.Sprintf(
				"%s is inlined into %s in %s, which the patch does not cover (%s)", n, strings.Join(in, ", "), o.Name, why)}
		}
	}
	return nil
}
