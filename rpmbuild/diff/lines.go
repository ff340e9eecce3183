package diff

import (
	"debug/dwarf"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// lineMap maps a source line of the original to the same line after the edit, from
// anchors: subprograms present in both objects, old decl_line -> new decl_line.
type lineMap struct {
	files map[string][]anchor // by source file name, sorted by old line
}

type anchor struct{ old, new int64 }

// moved tells whether a -> b is one source line moved by the edit (and not a constant
// that stayed where it was).
func (m *lineMap) moved(a, b int64) bool {
	if a == b {
		return false
	}
	for _, as := range m.files {
		i := sort.Search(len(as), func(i int) bool { return as[i].old > a }) - 1
		if i < 0 {
			continue
		}
		if d := as[i].new - as[i].old; d != 0 && a+d == b {
			return true
		}
	}
	return false
}

type declKey struct{ name, file string }

// decls reads the declaration line of every named subprogram. Objects without DWARF
// give no anchors, so nothing counts as line-only.
func decls(x *object) map[declKey]int64 {
	out := map[declKey]int64{}
	_ = elfsafe.Guard("read DWARF", func() error {
		d, err := x.elf.DWARF()
		if err != nil {
			return err
		}
		r := d.Reader()
		var files []*dwarf.LineFile
		compDir := ""
		for {
			e, err := r.Next()
			if err != nil || e == nil {
				return err
			}
			switch e.Tag {
			case dwarf.TagCompileUnit:
				files = nil
				compDir, _ = e.Val(dwarf.AttrCompDir).(string)
				if lr, err := d.LineReader(e); err == nil && lr != nil {
					files = lr.Files()
				}
				continue
			case dwarf.TagSubprogram:
			default:
				continue
			}
			name, _ := e.Val(dwarf.AttrLinkageName).(string)
			if name == "" {
				name, _ = e.Val(dwarf.AttrName).(string)
			}
			line, ok := e.Val(dwarf.AttrDeclLine).(int64)
			if name == "" || !ok {
				continue
			}
			fi, _ := e.Val(dwarf.AttrDeclFile).(int64)
			file := ""
			if fi >= 0 && int(fi) < len(files) && files[fi] != nil {
				// Relative to the build directory: the patched tree may be a copy.
				file = strings.TrimPrefix(files[fi].Name, compDir+"/")
			}
			k := declKey{name, file}
			if _, dup := out[k]; !dup {
				out[k] = line
			}
		}
	})
	return out
}

func buildLineMap(o, p *object) *lineMap {
	od, pd := decls(o), decls(p)
	m := &lineMap{files: map[string][]anchor{}}
	for k, ol := range od {
		if pl, ok := pd[k]; ok {
			m.files[k.file] = append(m.files[k.file], anchor{ol, pl})
		}
	}
	if len(m.files) == 0 {
		return nil
	}
	for f, as := range m.files {
		sort.Slice(as, func(i, j int) bool { return as[i].old < as[j].old })
		m.files[f] = as
	}
	return m
}
