package diff

import (
	"debug/dwarf"
	"fmt"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// dwarfIndex is what the safety analysis needs from one object's DWARF: functions
// (signature and the types their bodies mention), variables, and named types.
type dwarfIndex struct {
	d     *dwarf.Data
	funcs map[string]*dfunc
	vars  map[string]dwarf.Offset // file scope by name; function statics as "func/name"
	types map[string]dwarf.Offset // "struct s", "union u", "enum e", "typedef t", "class c"
}

type dfunc struct {
	name    string
	ret     dwarf.Offset // 0: void
	params  []dwarf.Offset
	uses    []dwarf.Offset // every type the subprogram's subtree mentions
	inlines []string       // functions inlined into it
	hasSig  bool           // params were read from a DIE that lists their types
}

func readDWARF(x *object) *dwarfIndex {
	ix := &dwarfIndex{funcs: map[string]*dfunc{}, vars: map[string]dwarf.Offset{}, types: map[string]dwarf.Offset{}}
	err := elfsafe.Guard("read DWARF", func() error {
		d, err := x.elf.DWARF()
		if err != nil {
			return err
		}
		ix.d = d
		return ix.walk()
	})
	if err != nil || ix.d == nil {
		return nil
	}
	return ix
}

func typeKey(tag dwarf.Tag, name string) string {
	switch tag {
	case dwarf.TagStructType:
		return "struct " + name
	case dwarf.TagUnionType:
		return "union " + name
	case dwarf.TagEnumerationType:
		return "enum " + name
	case dwarf.TagTypedef:
		return "typedef " + name
	case dwarf.TagClassType:
		return "class " + name
	}
	return ""
}

// walk reads the DIE tree once. Offsets of DIEs we may need later (specifications,
// abstract origins) are kept so that C++ definitions and inlined clones find their
// names and parameter types.
func (ix *dwarfIndex) walk() error {
	r := ix.d.Reader()
	type frame struct {
		fn  *dfunc
		tag dwarf.Tag
	}
	var stack []frame
	names := map[dwarf.Offset]string{}          // subprogram DIE -> name
	params := map[dwarf.Offset][]dwarf.Offset{} // subprogram DIE -> parameter types
	rets := map[dwarf.Offset]dwarf.Offset{}
	type pending struct {
		fn     *dfunc
		origin dwarf.Offset
	}
	var later []pending
	var cur *dfunc
	var curOff dwarf.Offset
	for n := 0; ; n++ {
		if n > 50_000_000 {
			return fmt.Errorf("DWARF too large")
		}
		e, err := r.Next()
		if err != nil {
			return err
		}
		if e == nil {
			break
		}
		if e.Tag == 0 {
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			cur = nil
			for i := len(stack) - 1; i >= 0; i-- {
				if stack[i].fn != nil {
					cur = stack[i].fn
					break
				}
			}
			continue
		}
		var fn *dfunc
		switch e.Tag {
		case dwarf.TagSubprogram:
			name, _ := e.Val(dwarf.AttrLinkageName).(string)
			if name == "" {
				name, _ = e.Val(dwarf.AttrName).(string)
			}
			fn = &dfunc{name: name}
			if t, ok := e.Val(dwarf.AttrType).(dwarf.Offset); ok {
				fn.ret = t
				rets[e.Offset] = t
			}
			names[e.Offset] = name
			curOff = e.Offset
			for _, a := range []dwarf.Attr{dwarf.AttrSpecification, dwarf.AttrAbstractOrigin} {
				if o, ok := e.Val(a).(dwarf.Offset); ok {
					later = append(later, pending{fn, o})
				}
			}
			if name != "" {
				if old := ix.funcs[name]; old == nil || e.Val(dwarf.AttrDeclaration) == nil {
					ix.funcs[name] = fn
				}
			}
		case dwarf.TagFormalParameter:
			if len(stack) > 0 && stack[len(stack)-1].tag == dwarf.TagSubprogram && cur != nil {
				if t, ok := e.Val(dwarf.AttrType).(dwarf.Offset); ok {
					cur.params = append(cur.params, t)
					cur.hasSig = true
					params[curOff] = append(params[curOff], t)
				}
			}
		case dwarf.TagInlinedSubroutine:
			if cur != nil {
				if o, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); ok {
					cur.inlines = append(cur.inlines, fmt.Sprint(int64(o)))
				}
			}
		case dwarf.TagVariable:
			name, _ := e.Val(dwarf.AttrName).(string)
			t, ok := e.Val(dwarf.AttrType).(dwarf.Offset)
			if name != "" && ok {
				if cur == nil {
					if _, dup := ix.vars[name]; !dup || e.Val(dwarf.AttrDeclaration) == nil {
						ix.vars[name] = t
					}
				} else if e.Val(dwarf.AttrLocation) != nil && e.Val(dwarf.AttrExternal) == nil {
					ix.vars[baseName(cur.name)+"/"+name] = t
				}
			}
		default:
			if k := typeKey(e.Tag, stringVal(e, dwarf.AttrName)); k != "" && !strings.HasSuffix(k, " ") {
				if _, dup := ix.types[k]; !dup && e.Val(dwarf.AttrDeclaration) == nil {
					ix.types[k] = e.Offset
				}
			}
		}
		if cur != nil && e.Tag != dwarf.TagSubprogram {
			if t, ok := e.Val(dwarf.AttrType).(dwarf.Offset); ok {
				cur.uses = append(cur.uses, t)
			}
		}
		if fn != nil {
			cur = fn
		}
		if e.Children {
			stack = append(stack, frame{fn: fn, tag: e.Tag})
		} else if fn != nil {
			// a subprogram without children closes at once
			cur = nil
			for i := len(stack) - 1; i >= 0; i-- {
				if stack[i].fn != nil {
					cur = stack[i].fn
					break
				}
			}
		}
	}
	// Definitions that point at a declaration (C++) or an abstract instance (clones,
	// inlined functions) take the name and signature from there.
	for _, p := range later {
		if p.fn.name == "" {
			p.fn.name = names[p.origin]
			if p.fn.name != "" {
				if old := ix.funcs[p.fn.name]; old == nil || (!old.hasSig && p.fn.hasSig) {
					ix.funcs[p.fn.name] = p.fn
				}
			}
		}
		if !p.fn.hasSig {
			if ps, ok := params[p.origin]; ok {
				p.fn.params, p.fn.hasSig = ps, true
			}
			if p.fn.ret == 0 {
				p.fn.ret = rets[p.origin]
			}
		}
	}
	// inlines hold abstract-origin offsets until now: turn them into names
	for _, f := range ix.funcs {
		for i, o := range f.inlines {
			var off int64
			fmt.Sscan(o, &off)
			f.inlines[i] = names[dwarf.Offset(off)]
		}
		f.inlines = uniq(f.inlines)
	}
	return nil
}

func stringVal(e *dwarf.Entry, a dwarf.Attr) string {
	s, _ := e.Val(a).(string)
	return s
}

func uniq(s []string) []string {
	m := map[string]bool{}
	var out []string
	for _, x := range s {
		if x != "" && !m[x] {
			m[x] = true
			out = append(out, x)
		}
	}
	sort.Strings(out)
	return out
}

// typ resolves a type offset, never panicking on malformed DWARF.
func (ix *dwarfIndex) typ(off dwarf.Offset) dwarf.Type {
	if ix == nil || off == 0 {
		return nil
	}
	var t dwarf.Type
	_ = elfsafe.Guard("DWARF type", func() error {
		var err error
		t, err = ix.d.Type(off)
		return err
	})
	return t
}

// fn finds the DWARF function for a symbol name, seeing through gcc's clone suffixes.
func (ix *dwarfIndex) fn(sym string) *dfunc {
	if ix == nil {
		return nil
	}
	if f := ix.funcs[sym]; f != nil {
		return f
	}
	if i := strings.IndexByte(sym, '.'); i > 0 {
		return ix.funcs[sym[:i]]
	}
	return nil
}
