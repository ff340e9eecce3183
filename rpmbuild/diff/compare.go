package diff

import (
	"bytes"
	"debug/elf"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// symKey names a symbol the same way in both objects: by its name in the original.
func symKey(x *object, y *symbol) string {
	if !x.patched {
		return y.name
	}
	if y.twin != nil {
		return y.twin.name
	}
	return "new:" + y.name
}

func secKey(x *object, s *section) string {
	if !x.patched {
		return s.name
	}
	if s.twin != nil {
		return s.twin.name
	}
	return "new:" + s.name
}

// relKey is the normalised target of a relocation: what it points to, independent of
// symbol numbering, of gcc's renumbering, and of where merged strings were placed.
func relKey(x *object, s *section, r rela) string {
	t := r.sym
	if t.sec == nil {
		return "U:" + t.name + "+" + strconv.FormatInt(r.addend, 10)
	}
	ts := t.sec
	if ts.merge() {
		off := x.targetOffset(s, r)
		tail := off - int64(t.value) - r.addend
		return "M:" + mergedContent(ts, off) + "|" + strconv.FormatInt(tail, 10)
	}
	if t.typ == elf.STT_SECTION || !t.named() {
		off := x.targetOffset(s, r)
		if y := ts.covering(off); y != nil {
			return symKey(x, y) + "+" + strconv.FormatInt(int64(t.value)+r.addend-int64(y.value), 10)
		}
		return "S:" + secKey(x, ts) + "+" + strconv.FormatInt(int64(t.value)+r.addend, 10)
	}
	return symKey(x, t) + "+" + strconv.FormatInt(r.addend, 10)
}

// mergedContent is the string or constant at off in a SHF_MERGE section.
func mergedContent(s *section, off int64) string {
	if off < 0 || off > int64(len(s.data)) {
		return fmt.Sprintf("?%d", off)
	}
	if s.pool {
		return fmt.Sprintf("%q", s.piece(off))
	}
	b := s.data[off:]
	if s.flags&elf.SHF_STRINGS != 0 {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return strconv.Quote(string(b))
	}
	n := int(s.entsize)
	if n <= 0 || n > len(b) {
		n = len(b)
	}
	return fmt.Sprintf("%x", b[:n])
}

// compare classifies every interesting section and named symbol of the patched object.
func compare(o, p *object, lm *lineMap) {
	for _, s := range p.secs {
		if !s.interesting() {
			continue
		}
		switch {
		case s.twin == nil:
			s.status = New
		case sameSection(o, p, s.twin, s, lm):
			s.status = Same
		default:
			s.status = Changed
		}
	}
	for _, y := range p.syms {
		if !y.defined() || !y.named() || y.sec == nil {
			continue
		}
		switch {
		case y.twin == nil:
			y.status = New
		case y.twin.sec != nil && y.twin.sec.twin != y.sec:
			y.status = Changed
		case y.twin.value != y.value || y.twin.size != y.size && y.sec.typ == elf.SHT_NOBITS:
			y.status = Changed
		default:
			y.status = y.sec.status
		}
	}
}

func sameSection(o, p *object, a, b *section, lm *lineMap) bool {
	if a.typ != b.typ || a.flags&^elf.SHF_GROUP != b.flags&^elf.SHF_GROUP || a.size != b.size || a.entsize != b.entsize {
		return false
	}
	if (a.group == nil) != (b.group == nil) {
		return false
	}
	if a.typ == elf.SHT_GROUP {
		// Relocation and debug sections are members too; they follow their section.
		am, bm := interestingOnly(a.members), interestingOnly(b.members)
		if len(am) != len(bm) {
			return false
		}
		for i := range am {
			if am[i].twin != bm[i] {
				return false
			}
		}
		return true
	}
	if a.typ == elf.SHT_NOBITS {
		return true
	}
	if len(a.relas) != len(b.relas) {
		return false
	}
	for i := range a.relas {
		ra, rb := a.relas[i], b.relas[i]
		if ra.off != rb.off || ra.typ != rb.typ || relKey(o, a, ra) != relKey(p, b, rb) {
			return false
		}
	}
	if bytes.Equal(a.data, b.data) {
		return true
	}
	if a.exec() && lm != nil && lineOnly(a.data, b.data, lm) {
		b.lineOnly = true
		return true
	}
	return false
}

// lineOnly tells whether two code sequences are the same instructions except for
// immediates that are line numbers moved by the edit (see the package documentation).
func lineOnly(a, b []byte, lm *lineMap) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	if len(a) != len(b) {
		return false
	}
	moved := 0
	for off := 0; off < len(a); {
		ia, err1 := x86asm.Decode(a[off:], 64)
		ib, err2 := x86asm.Decode(b[off:], 64)
		if err1 != nil || err2 != nil || ia.Len != ib.Len || ia.Len <= 0 {
			return false
		}
		if !bytes.Equal(a[off:off+ia.Len], b[off:off+ib.Len]) {
			if ia.Op != ib.Op || ia.Prefix != ib.Prefix {
				return false
			}
			for i := range ia.Args {
				xa, xb := ia.Args[i], ib.Args[i]
				if xa == xb {
					continue
				}
				ma, okA := xa.(x86asm.Imm)
				mb, okB := xb.(x86asm.Imm)
				if !okA || !okB || !lm.moved(int64(ma), int64(mb)) {
					return false
				}
				moved++
			}
		}
		off += ia.Len
	}
	return moved > 0
}

// readOnly tells whether a data section cannot change at run time: .rodata, and
// .data.rel.ro which the dynamic linker makes read-only after relocation.
func readOnly(s *section) bool {
	return !s.write() || strings.HasPrefix(s.name, ".data.rel.ro")
}

// users lists the sections whose relocations reach section t.
func users(x *object, t *section) []*section {
	var out []*section
	for _, s := range x.secs {
		if !s.interesting() || s == t {
			continue
		}
		for _, r := range s.relas {
			if r.sym != nil && r.sym.sec == t {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

func funcName(s *section) string {
	if y := s.primary(); y != nil {
		return y.name
	}
	return s.name
}

func funcNames(ss []*section) string {
	var names []string
	for _, s := range ss {
		if s.exec() {
			names = append(names, funcName(s))
		}
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}

// propagate makes a change reach what depends on it: the hot and cold parts of a
// function go together, and code that reads changed read-only data is replaced with
// it (the data ships as a new copy, so the old code must not be left reading the old).
func propagate(o, p *object) error {
	mark := func(s *section, why string) bool {
		if s.status == Same {
			s.status, s.reason, s.lineOnly = Changed, why, false
			for _, y := range s.syms {
				if y.status == Same {
					y.status = Changed
				}
			}
			return true
		}
		return false
	}
	for again := true; again; {
		again = false
		for _, s := range p.secs {
			if !s.interesting() || !s.exec() {
				continue
			}
			for _, y := range s.syms {
				if y.typ != elf.STT_FUNC || !isCold(y.name) {
					continue
				}
				parent := p.funcByName(coldParent(y.name))
				if parent == nil || parent.sec == nil {
					continue
				}
				if s.status != Same && mark(parent.sec, "its cold part changed") {
					again = true
				}
				if parent.sec.status != Same && mark(s, "cold part of a changed function") {
					again = true
				}
			}
		}
		for _, s := range p.secs {
			if !s.interesting() || s.exec() || s.status != Changed || s.merge() || !readOnly(s) || s.tls() {
				continue
			}
			if y := s.primary(); y != nil && isVagueData(y.name) {
				return vagueDataError(p, s, y.name)
			}
			if y := s.primary(); y != nil && y.bind != elf.STB_LOCAL {
				return &UnpatchableError{Function: funcNames(users(p, s)), Section: s.name,
					Reason: fmt.Sprintf("changed initial value of global read-only data %s (other files may read it)", y.name)}
			}
			for _, u := range users(p, s) {
				if !u.exec() && !readOnly(u) {
					return &UnpatchableError{Function: funcNames(users(p, s)), Section: s.name,
						Reason: fmt.Sprintf("changed read-only data referenced from writable data %s", u.name)}
				}
				if mark(u, "uses changed read-only data "+s.name) {
					again = true
				}
			}
		}
	}
	return nil
}

func (x *object) funcByName(name string) *symbol {
	for _, y := range x.syms {
		if y.name == name && y.typ == elf.STT_FUNC && y.defined() {
			return y
		}
	}
	return nil
}

// verify refuses what cannot be changed in a running process.
func verify(o, p *object) error {
	for _, s := range p.secs {
		if !s.interesting() {
			continue
		}
		prim := s.primary()
		name := s.name
		if prim != nil {
			name = prim.name
		}
		switch {
		case s.typ == elf.SHT_GROUP:
			if s.status == Changed {
				if err := verifyGroup(p, s); err != nil {
					return err
				}
			}
		case s.group != nil && s.status != Same && !s.exec() && isVagueVar(s):
			return vagueDataError(p, s, name)
		case s.tls() && s.status == New:
			return &UnpatchableError{Function: funcNames(users(p, s)), Section: s.name,
				Reason: fmt.Sprintf("new thread-local variable %s (running threads have no storage for it)", name)}
		case s.tls() && s.status == Changed:
			return &UnpatchableError{Function: funcNames(users(p, s)), Section: s.name,
				Reason: fmt.Sprintf("changed thread-local variable %s", name)}
		case isInitArray(s):
			// Constructors do not run again; classify warns about them.
		case !s.exec() && !readOnly(s) && s.status == Changed:
			return &UnpatchableError{Function: funcNames(users(p, s)), Section: s.name,
				Reason: fmt.Sprintf("changed initial value of global or static data %s (the running process holds its own copy)", name)}
		}
		for _, y := range s.syms {
			if y.typ == elf.STT_GNU_IFUNC && s.status != Same {
				return &UnpatchableError{Function: y.name, Section: s.name, Reason: "changed ifunc " + y.name}
			}
		}
	}
	for _, y := range p.syms {
		if y.typ == elf.STT_TLS && y.defined() && y.twin == nil {
			return &UnpatchableError{Function: funcNames(usersOfSym(p, y)), Section: secName(y),
				Reason: fmt.Sprintf("new thread-local variable %s (running threads have no storage for it)", y.name)}
		}
	}
	return nil
}

func secName(y *symbol) string {
	if y.sec != nil {
		return y.sec.name
	}
	return "-"
}

func usersOfSym(x *object, y *symbol) []*section {
	if y.sec != nil {
		return users(x, y.sec)
	}
	return nil
}

func isInitArray(s *section) bool {
	return s.typ == elf.SHT_INIT_ARRAY || s.typ == elf.SHT_PREINIT_ARRAY || s.typ == elf.SHT_FINI_ARRAY ||
		strings.HasPrefix(s.name, ".init_array") || strings.HasPrefix(s.name, ".ctors") ||
		strings.HasPrefix(s.name, ".fini_array") || strings.HasPrefix(s.name, ".dtors")
}

// ctorWarnings names changed functions that .init_array calls: they are replaced, but a
// running process has already run them.
func ctorWarnings(p *object) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range p.secs {
		if !s.interesting() || !isInitArray(s) {
			continue
		}
		for _, r := range s.relas {
			for _, y := range refTargets(p, s, r) {
				if y.sec != nil && y.sec.status != Same && !seen[y.name] {
					seen[y.name] = true
					out = append(out, fmt.Sprintf("constructor %s %s: it already ran in running processes and will not run again", y.name, y.sec.status))
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func interestingOnly(ss []*section) []*section {
	var out []*section
	for _, s := range ss {
		if s.interesting() {
			out = append(out, s)
		}
	}
	return out
}
