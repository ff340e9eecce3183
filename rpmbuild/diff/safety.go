package diff

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"sort"
	"strings"
)

// The safety analysis reads the DWARF of both objects and refuses a patch that would
// make running code read memory with the wrong layout:
//
//   - every named type (struct, union, enum, typedef) that a changed or new function
//     mentions (parameters, locals, return type, through pointers and members) must
//     have the same layout in the original: members with their names, offsets, sizes
//     and types, enum constants, array bounds, typedef targets. A member slipped into
//     a padding hole leaves the size alone, so members are compared one by one;
//   - every variable those functions touch must keep its type;
//   - a function whose parameters or return type changed is replaced only if every
//     caller in the translation unit is replaced with it, and nothing else holds its
//     address (a function-pointer table the patch does not replace still calls the old
//     entry, which now jumps to code expecting the new arguments).

// typeCmp compares types of the original (a) and the patched object (b).
type typeCmp struct {
	seen map[[2]dwarf.Type]bool
}

const maxDiffs = 8

func unqual(t dwarf.Type) dwarf.Type {
	for i := 0; i < 64; i++ {
		q, ok := t.(*dwarf.QualType)
		if !ok {
			return t
		}
		t = q.Type
	}
	return t
}

func typeName(t dwarf.Type) string {
	if t == nil {
		return "void"
	}
	return t.String()
}

// diff appends the layout differences between a and b to out.
func (c *typeCmp) diff(a, b dwarf.Type, out *[]string) {
	if len(*out) >= maxDiffs {
		return
	}
	if a == nil || b == nil {
		if (a == nil) != (b == nil) {
			*out = append(*out, fmt.Sprintf("type changed from %s to %s", typeName(a), typeName(b)))
		}
		return
	}
	a, b = unqual(a), unqual(b)
	key := [2]dwarf.Type{a, b}
	if c.seen[key] {
		return
	}
	c.seen[key] = true
	if fmt.Sprintf("%T", a) != fmt.Sprintf("%T", b) {
		*out = append(*out, fmt.Sprintf("type changed from %s to %s", typeName(a), typeName(b)))
		return
	}
	switch ta := a.(type) {
	case *dwarf.StructType:
		tb := b.(*dwarf.StructType)
		c.structDiff(ta, tb, out)
	case *dwarf.EnumType:
		tb := b.(*dwarf.EnumType)
		old := map[string]int64{}
		for _, v := range ta.Val {
			old[v.Name] = v.Val
		}
		for _, v := range tb.Val {
			ov, ok := old[v.Name]
			switch {
			case !ok:
				*out = append(*out, fmt.Sprintf("%s: constant %s added (= %d)", typeName(a), v.Name, v.Val))
			case ov != v.Val:
				*out = append(*out, fmt.Sprintf("%s: constant %s changed from %d to %d", typeName(a), v.Name, ov, v.Val))
			}
			delete(old, v.Name)
		}
		for n := range old {
			*out = append(*out, fmt.Sprintf("%s: constant %s removed", typeName(a), n))
		}
		if ta.ByteSize != tb.ByteSize {
			*out = append(*out, fmt.Sprintf("%s: size changed from %d to %d", typeName(a), ta.ByteSize, tb.ByteSize))
		}
	case *dwarf.ArrayType:
		tb := b.(*dwarf.ArrayType)
		if ta.Count != tb.Count {
			*out = append(*out, fmt.Sprintf("array %s: bound changed from %d to %d", typeName(a), ta.Count, tb.Count))
		}
		c.diff(ta.Type, tb.Type, out)
	case *dwarf.TypedefType:
		c.diff(ta.Type, b.(*dwarf.TypedefType).Type, out)
	case *dwarf.PtrType:
		c.diff(ta.Type, b.(*dwarf.PtrType).Type, out)
	case *dwarf.FuncType:
		tb := b.(*dwarf.FuncType)
		if len(ta.ParamType) != len(tb.ParamType) {
			*out = append(*out, fmt.Sprintf("function type changed from %s to %s", typeName(a), typeName(b)))
			return
		}
		c.diff(ta.ReturnType, tb.ReturnType, out)
		for i := range ta.ParamType {
			c.diff(ta.ParamType[i], tb.ParamType[i], out)
		}
	default:
		if a.Size() != b.Size() || typeName(a) != typeName(b) {
			*out = append(*out, fmt.Sprintf("type changed from %s (%d bytes) to %s (%d bytes)", typeName(a), a.Size(), typeName(b), b.Size()))
		}
	}
}

func (c *typeCmp) structDiff(a, b *dwarf.StructType, out *[]string) {
	name := typeName(a)
	if a.Incomplete || b.Incomplete {
		return // a declaration only: the layout is not known here
	}
	// Members pair by name; anonymous ones (a union's unnamed structs, say) by their
	// order among the anonymous members, since they all share the empty name.
	ka, kb := memberKeys(a.Field), memberKeys(b.Field)
	old := map[string]*dwarf.StructField{}
	for i, f := range a.Field {
		old[ka[i]] = f
	}
	for i, f := range b.Field {
		of, ok := old[kb[i]]
		if !ok {
			*out = append(*out, fmt.Sprintf("%s: member %s added at offset %d", name, kb[i], f.ByteOffset))
			continue
		}
		delete(old, kb[i])
		if of.ByteOffset != f.ByteOffset || of.DataBitOffset != f.DataBitOffset || of.BitOffset != f.BitOffset || of.BitSize != f.BitSize {
			*out = append(*out, fmt.Sprintf("%s: member %s moved from offset %d to %d", name, kb[i], of.ByteOffset, f.ByteOffset))
		}
		var sub []string
		c.diff(of.Type, f.Type, &sub)
		for _, s := range sub {
			*out = append(*out, fmt.Sprintf("%s: member %s: %s", name, kb[i], s))
		}
	}
	for i, f := range a.Field {
		if _, gone := old[ka[i]]; gone {
			*out = append(*out, fmt.Sprintf("%s: member %s removed (was at offset %d)", name, ka[i], f.ByteOffset))
		}
	}
	if a.ByteSize != b.ByteSize {
		*out = append(*out, fmt.Sprintf("%s: size changed from %d to %d", name, a.ByteSize, b.ByteSize))
	}
	if len(*out) > maxDiffs {
		*out = (*out)[:maxDiffs]
	}
}

// memberKeys names each member for pairing: its name, or "(anonymous #N)" for the
// N-th unnamed one.
func memberKeys(fields []*dwarf.StructField) []string {
	keys := make([]string, len(fields))
	anon := 0
	for i, f := range fields {
		keys[i] = f.Name
		if f.Name == "" {
			anon++
			keys[i] = fmt.Sprintf("(anonymous #%d)", anon)
		}
	}
	return keys
}

// namedTypes collects the named types reachable from t, keyed like dwarfIndex.types.
func namedTypes(t dwarf.Type, into map[string]bool, seen map[dwarf.Type]bool) {
	for depth := 0; t != nil && depth < 10000; depth++ {
		if seen[t] {
			return
		}
		seen[t] = true
		switch tt := t.(type) {
		case *dwarf.QualType:
			t = tt.Type
			continue
		case *dwarf.PtrType:
			t = tt.Type
			continue
		case *dwarf.ArrayType:
			t = tt.Type
			continue
		case *dwarf.TypedefType:
			into["typedef "+tt.Name] = true
			t = tt.Type
			continue
		case *dwarf.StructType:
			if tt.StructName != "" {
				into[tt.Kind+" "+tt.StructName] = true
			}
			for _, f := range tt.Field {
				namedTypes(f.Type, into, seen)
			}
		case *dwarf.EnumType:
			if tt.EnumName != "" {
				into["enum "+tt.EnumName] = true
			}
		case *dwarf.FuncType:
			namedTypes(tt.ReturnType, into, seen)
			for _, p := range tt.ParamType {
				namedTypes(p, into, seen)
			}
		}
		return
	}
}

// safety runs the DWARF checks on the functions the patch carries.
func safety(r *Result) error {
	o, p := r.orig, r.patched
	od, pd := readDWARF(o), readDWARF(p)
	if od == nil || pd == nil {
		r.Warnings = append(r.Warnings, "no DWARF in the objects: data layout and signatures were not checked")
		return nil
	}
	r.inlines = map[string][]string{}
	cmp := &typeCmp{seen: map[[2]dwarf.Type]bool{}}
	usedBy := map[string][]string{} // named type -> functions
	for _, s := range p.secs {
		if !s.include || !s.exec() {
			continue
		}
		f := s.primary()
		if f == nil || f.typ != elf.STT_FUNC {
			continue
		}
		pf := pd.fn(f.name)
		if pf == nil {
			continue
		}
		if len(pf.inlines) > 0 {
			r.inlines[f.name] = pf.inlines
		}
		set, seen := map[string]bool{}, map[dwarf.Type]bool{}
		for _, off := range append(append([]dwarf.Offset{pf.ret}, pf.params...), pf.uses...) {
			namedTypes(pd.typ(off), set, seen)
		}
		for k := range set {
			usedBy[k] = append(usedBy[k], f.name)
		}
		if err := checkVars(r, s, f, od, pd, cmp); err != nil {
			return err
		}
	}
	keys := make([]string, 0, len(usedBy))
	for k := range usedBy {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ooff, ok1 := od.types[k]
		poff, ok2 := pd.types[k]
		if !ok1 || !ok2 {
			continue // a new type, or one only declared: no running data has it
		}
		var diffs []string
		cmp.diff(od.typ(ooff), pd.typ(poff), &diffs)
		if len(diffs) > 0 {
			fns := uniq(usedBy[k])
			return &UnpatchableError{Function: strings.Join(fns, ","), Section: secOfFuncs(p, fns),
				Reason: layoutReason("data layout of "+k, diffs)}
		}
	}
	return checkSignatures(r, od, pd, cmp)
}

// shadowHint is what a refused change of a structure's members says to do instead:
// running objects keep their old layout, so new per-object state goes beside them.
const shadowHint = "objects already in memory keep the old layout: keep the structure as it was and " +
	"attach the new per-object data with a shadow variable (upatch_shadow_get_or_alloc in upatch.h)"

// layoutReason says what changed in the layout of what, and, when a structure's
// members changed, that a shadow variable is the way to add state to it.
func layoutReason(what string, diffs []string) string {
	r := what + " changed: " + strings.Join(diffs, "; ")
	for _, d := range diffs {
		if strings.Contains(d, ": member ") {
			return r + "; " + shadowHint
		}
	}
	return r
}

func secOfFuncs(p *object, fns []string) string {
	if len(fns) > 0 {
		if y := p.funcByName(fns[0]); y != nil && y.sec != nil {
			return y.sec.name
		}
	}
	return "-"
}

// checkVars compares the types of the variables that function f of section s touches.
func checkVars(r *Result, s *section, f *symbol, od, pd *dwarfIndex, cmp *typeCmp) error {
	p := r.patched
	oldFn := f.name
	if f.twin != nil {
		oldFn = f.twin.name
	}
	done := map[*symbol]bool{}
	for _, rl := range s.relas {
		if t := rl.sym; t != nil && t.sec == nil && t.name != "" && !done[t] {
			// a variable of another file, declared extern here: its declared type
			// is all this file knows, and the new code was compiled against it
			done[t] = true
			ot, ok1 := od.vars[t.name]
			pt, ok2 := pd.vars[t.name]
			if ok1 && ok2 {
				var diffs []string
				cmp.diff(od.typ(ot), pd.typ(pt), &diffs)
				if len(diffs) > 0 {
					return &UnpatchableError{Function: f.name, Section: s.name,
						Reason: layoutReason("type of variable "+t.name, diffs)}
				}
			}
		}
		for _, y := range refTargets(p, s, rl) {
			if done[y] || y.twin == nil || (y.typ != elf.STT_OBJECT && y.typ != elf.STT_TLS) {
				continue
			}
			done[y] = true
			var pt, ot dwarf.Offset
			var ok1, ok2 bool
			if y.bind == elf.STB_LOCAL && baseName(y.name) != y.name {
				pt, ok2 = pd.vars[baseName(f.name)+"/"+baseName(y.name)]
				ot, ok1 = od.vars[baseName(oldFn)+"/"+baseName(y.twin.name)]
			}
			if !ok1 || !ok2 {
				pt, ok2 = pd.vars[y.name]
				ot, ok1 = od.vars[y.twin.name]
			}
			if !ok1 || !ok2 {
				continue
			}
			var diffs []string
			cmp.diff(od.typ(ot), pd.typ(pt), &diffs)
			if len(diffs) > 0 {
				return &UnpatchableError{Function: f.name, Section: secName(y),
					Reason: layoutReason("type of variable "+y.twin.name, diffs)}
			}
		}
	}
	return nil
}

// checkSignatures refuses a changed signature while a caller or a stored address is
// left with the old code.
func checkSignatures(r *Result, od, pd *dwarfIndex, cmp *typeCmp) error {
	p := r.patched
	for _, s := range p.secs {
		if !s.include || !s.exec() || s.status != Changed {
			continue
		}
		f := s.primary()
		if f == nil || f.twin == nil || f.typ != elf.STT_FUNC || isCold(f.name) {
			continue
		}
		of, pf := od.fn(f.twin.name), pd.fn(f.name)
		if of == nil || pf == nil || !of.hasSig || !pf.hasSig {
			continue
		}
		var diffs []string
		if len(of.params) != len(pf.params) {
			diffs = append(diffs, fmt.Sprintf("%d parameters became %d", len(of.params), len(pf.params)))
		} else {
			for i := range of.params {
				var d []string
				cmp.diff(od.typ(of.params[i]), pd.typ(pf.params[i]), &d)
				for _, x := range d {
					diffs = append(diffs, fmt.Sprintf("parameter %d: %s", i+1, x))
				}
			}
		}
		var d []string
		cmp.diff(od.typ(of.ret), pd.typ(pf.ret), &d)
		for _, x := range d {
			diffs = append(diffs, "return "+x)
		}
		if len(diffs) == 0 {
			continue
		}
		sig := strings.Join(diffs, "; ")
		for _, u := range users(p, s) {
			if u.include || isCold(funcName(u)) && coldParent(funcName(u)) == f.name ||
				strings.HasPrefix(u.name, ".gcc_except_table") {
				// the function's own cold part and landing-pad table go with it
				continue
			}
			if u.exec() {
				return &UnpatchableError{Function: f.twin.name, Section: s.name,
					Reason: fmt.Sprintf("signature changed (%s) and caller %s is not in the patch", sig, funcName(u))}
			}
			return &UnpatchableError{Function: f.twin.name, Section: s.name,
				Reason: fmt.Sprintf("signature changed (%s) and its address is stored in %s, which the patch does not replace", sig, u.name)}
		}
		if f.twin.bind != elf.STB_LOCAL {
			r.Warnings = append(r.Warnings, fmt.Sprintf("signature of global function %s changed (%s): every caller in other files must be in the patch", f.twin.name, sig))
		}
	}
	return nil
}
