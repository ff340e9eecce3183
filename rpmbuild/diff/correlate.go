package diff

import (
	"debug/elf"
	"sort"
	"strings"
)

// baseName drops gcc's numbering from a symbol or section name: "calls.1" -> "calls",
// "sq.constprop.0" -> "sq.constprop", "f.part.0.isra.0" -> "f.part.isra". The numbers
// depend on the order gcc met things in the translation unit, so an edit renumbers them.
func baseName(n string) string {
	if !strings.Contains(n, ".") {
		return n
	}
	lead := ""
	if strings.HasPrefix(n, ".") {
		lead, n = ".", n[1:]
	}
	parts := strings.Split(n, ".")
	out := parts[:1]
	for _, p := range parts[1:] {
		if p != "" && strings.Trim(p, "0123456789") == "" {
			continue
		}
		out = append(out, p)
	}
	return lead + strings.Join(out, ".")
}

// isCold tells whether a function symbol is the cold part gcc split off a function.
func isCold(name string) bool {
	return strings.HasSuffix(baseName(name), ".cold")
}

// coldParent is the name of the function a cold part belongs to.
func coldParent(name string) string {
	i := strings.LastIndex(name, ".cold")
	if i < 0 {
		return name
	}
	return name[:i]
}

func symClass(y *symbol) int {
	switch y.typ {
	case elf.STT_FUNC, elf.STT_GNU_IFUNC:
		return 0
	case elf.STT_TLS:
		return 2
	}
	return 1
}

func link(a, b *symbol) { a.twin, b.twin = b, a }

// correlate pairs the sections and symbols of the two objects.
func correlate(o, p *object) {
	defs := func(x *object, local bool) []*symbol {
		var out []*symbol
		for _, y := range x.syms {
			if y.defined() && y.named() && y.sec != nil && (y.bind == elf.STB_LOCAL) == local {
				out = append(out, y)
			}
		}
		return out
	}
	// Globals keep their names.
	og := map[string]*symbol{}
	for _, y := range defs(o, false) {
		og[y.name] = y
	}
	for _, y := range defs(p, false) {
		if t := og[y.name]; t != nil && t.twin == nil {
			link(t, y)
		}
	}
	ol, pl := defs(o, true), defs(p, true)
	// Functions first: the parents of static locals are found through them.
	matchLocals(filterClass(ol, 0), filterClass(pl, 0), nil)
	parents := func(x *object) map[*symbol]string { return staticParents(x) }
	op, pp := parents(o), parents(p)
	for c := 1; c <= 2; c++ {
		matchLocals(filterClass(ol, c), filterClass(pl, c), func(y *symbol) string {
			if y.sec != nil && y.sec.exec() {
				return ""
			}
			if m := op[y]; m != "" {
				return m
			}
			return pp[y]
		})
	}
	// A symbol that changed binding (static became global or back) keeps its name.
	byName := map[string]*symbol{}
	for _, y := range append(defs(o, true), defs(o, false)...) {
		if y.twin == nil {
			byName[y.name] = y
		}
	}
	for _, y := range append(defs(p, true), defs(p, false)...) {
		if t := byName[y.name]; y.twin == nil && t != nil && t.twin == nil && symClass(t) == symClass(y) {
			link(t, y)
		}
	}
	correlateSections(o, p)
}

func filterClass(ys []*symbol, c int) []*symbol {
	var out []*symbol
	for _, y := range ys {
		if symClass(y) == c {
			out = append(out, y)
		}
	}
	return out
}

// matchLocals pairs local symbols: a base name unique on both sides pairs directly
// (the number changed, the thing did not); otherwise the same parent function and
// order decide, then the exact name.
func matchLocals(ol, pl []*symbol, parent func(*symbol) string) {
	group := func(ys []*symbol) map[string][]*symbol {
		m := map[string][]*symbol{}
		for _, y := range ys {
			if y.twin == nil {
				m[baseName(y.name)] = append(m[baseName(y.name)], y)
			}
		}
		return m
	}
	og, pg := group(ol), group(pl)
	for b, ps := range pg {
		if os := og[b]; len(os) == 1 && len(ps) == 1 {
			link(os[0], ps[0])
		}
	}
	if parent != nil {
		key := func(y *symbol) string { return baseName(y.name) + "|" + parent(y) }
		om := map[string][]*symbol{}
		for _, y := range ol {
			if y.twin == nil {
				om[key(y)] = append(om[key(y)], y)
			}
		}
		for _, y := range pl {
			if y.twin != nil {
				continue
			}
			k := key(y)
			for i, t := range om[k] {
				if t.twin == nil {
					link(t, y)
					om[k] = om[k][i+1:]
					break
				}
			}
		}
	}
	on := map[string]*symbol{}
	for _, y := range ol {
		if y.twin == nil {
			on[y.name] = y
		}
	}
	for _, y := range pl {
		if t := on[y.name]; y.twin == nil && t != nil && t.twin == nil {
			link(t, y)
		}
	}
	// Clones left over (foo.constprop.0 and .1 became .1 and .2): pair in order.
	og, pg = group(ol), group(pl)
	for b, ps := range pg {
		os := og[b]
		for i := 0; i < len(ps) && i < len(os); i++ {
			link(os[i], ps[i])
		}
	}
}

// staticParents names, for every local variable, the functions that reference it,
// by their name in the original (so both sides agree once functions are paired).
func staticParents(x *object) map[*symbol]string {
	refs := map[*symbol]map[string]bool{}
	for _, s := range x.secs {
		if !s.exec() {
			continue
		}
		f := s.primary()
		if f == nil {
			continue
		}
		fname := f.name
		if x.other != nil && f.twin != nil && f.sec != nil && isPatched(x) {
			fname = f.twin.name
		}
		for _, r := range s.relas {
			for _, t := range refTargets(x, s, r) {
				if refs[t] == nil {
					refs[t] = map[string]bool{}
				}
				refs[t][baseName(fname)] = true
			}
		}
	}
	out := map[*symbol]string{}
	for y, m := range refs {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		sort.Strings(names)
		out[y] = strings.Join(names, ",")
	}
	return out
}

// isPatched tells the patched object from the original: correlate runs with
// o.other set on both, and the patched one is linked second.
func isPatched(x *object) bool { return x.patched }

// refTargets lists the named symbols a relocation reaches (through a section symbol
// too: gas turns references to local symbols into section+offset).
func refTargets(x *object, s *section, r rela) []*symbol {
	t := r.sym
	if t == nil || t.sec == nil {
		return nil
	}
	if t.named() && t.typ != elf.STT_NOTYPE {
		return []*symbol{t}
	}
	if y := t.sec.covering(x.targetOffset(s, r)); y != nil {
		return []*symbol{y}
	}
	return nil
}

func correlateSections(o, p *object) {
	linkSec := func(a, b *section) {
		a.twin, b.twin = b, a
		if a.secsym != nil && b.secsym != nil {
			a.secsym.twin, b.secsym.twin = b.secsym, a.secsym
		}
	}
	for _, s := range p.secs {
		if !s.interesting() || s.typ == elf.SHT_GROUP {
			continue
		}
		if y := s.primary(); y != nil && y.twin != nil && y.twin.sec != nil && y.twin.sec.twin == nil && y.twin.sec.interesting() {
			linkSec(y.twin.sec, s)
		}
	}
	// Groups by their signature symbol ("_ZN1A3getEv"): every group section is ".group".
	og := map[string]*section{}
	for _, s := range o.secs {
		if s.typ == elf.SHT_GROUP {
			og[o.groupSignature(s)] = s
		}
	}
	for _, s := range p.secs {
		if s.typ == elf.SHT_GROUP {
			if t := og[p.groupSignature(s)]; t != nil && t.twin == nil {
				linkSec(t, s)
			}
		}
	}
	// Anonymous sections (jump tables, strings, merged constants) by name, seeing
	// through numbering when that is unambiguous.
	norm := func(x *object) map[string][]*section {
		m := map[string][]*section{}
		for _, s := range x.secs {
			if s.interesting() && s.twin == nil && s.typ != elf.SHT_GROUP {
				m[baseName(s.name)] = append(m[baseName(s.name)], s)
			}
		}
		return m
	}
	on, pn := norm(o), norm(p)
	for b, ps := range pn {
		if os := on[b]; len(os) == 1 && len(ps) == 1 {
			linkSec(os[0], ps[0])
		}
	}
	byName := map[string]*section{}
	for _, s := range o.secs {
		if s.interesting() && s.twin == nil {
			byName[s.name] = s
		}
	}
	for _, s := range p.secs {
		if t := byName[s.name]; s.interesting() && s.twin == nil && t != nil && t.twin == nil {
			linkSec(t, s)
		}
	}
}
