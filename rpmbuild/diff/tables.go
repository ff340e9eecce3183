package diff

import (
	"fmt"
	"sort"
	"strings"
)

// Table describes a section of fixed-size entries that each describe a place in the
// code (the kernel's exception table, alternatives, static-key jumps, BUG sites...).
// Such a section is not data the code uses: it is left out of the comparison, and
// the patch object carries, in a section of the same name, the entries whose code
// field points into code the patch carries, with their relocations.
type Table struct {
	Section   string
	EntrySize int
	// Code is the offset in an entry of the field that points at the code the entry
	// describes; every entry must have a relocation there (which is how a wrong
	// EntrySize shows).
	Code int
	// Aux names a section of code that entries point to besides (the replacement
	// instructions of alternatives): AuxField is the offset of that pointer in the
	// entry, AuxLen the offset of its one-byte length. Only the relocations inside
	// the pieces that carried entries reach are kept.
	Aux      string
	AuxField int
	AuxLen   int
}

func (o Options) tableSections() map[string]bool {
	if len(o.Tables) == 0 && len(o.Owned) == 0 {
		return nil
	}
	m := map[string]bool{}
	for _, n := range o.Owned {
		m[n] = true
	}
	for _, t := range o.Tables {
		m[t.Section] = true
		if t.Aux != "" {
			m[t.Aux] = true
		}
	}
	return m
}

// span is a byte range [from, to) of a section.
type span struct{ from, to int64 }

// entry is one entry of a table: its index and its relocations.
type entry struct {
	idx   int
	relas []rela
}

func (e entry) at(field, size int) (rela, bool) {
	for _, r := range e.relas {
		if int(r.off)-e.idx*size == field {
			return r, true
		}
	}
	return rela{}, false
}

// tableEntries splits table s into its entries, checking that the entry size fits
// the section: a whole number of entries, no relocation across two entries, and a
// relocation at every entry's code field.
func tableEntries(s *section, t Table) ([]entry, error) {
	n := t.EntrySize
	if n <= 0 || len(s.data)%n != 0 {
		return nil, &UnpatchableError{Section: s.name,
			Reason: fmt.Sprintf("%d bytes are not a whole number of %d-byte entries (the entry size the builder assumes is not this kernel's)", len(s.data), n)}
	}
	ents := make([]entry, len(s.data)/n)
	for i := range ents {
		ents[i].idx = i
	}
	for _, r := range s.relas {
		i := int(r.off) / n
		if i >= len(ents) || int(r.off)%n+int(relocSize(r.typ)) > n {
			return nil, &UnpatchableError{Section: s.name,
				Reason: fmt.Sprintf("relocation at %#x crosses a %d-byte entry boundary (the entry size the builder assumes is not this kernel's)", r.off, n)}
		}
		ents[i].relas = append(ents[i].relas, r)
	}
	// The entries of one table are made by one macro: the same fields relocated the
	// same way in each. Misread entries show as differing patterns.
	pattern := func(e entry) string {
		var b strings.Builder
		for _, r := range e.relas {
			fmt.Fprintf(&b, "%d:%d ", int(r.off)-e.idx*n, r.typ)
		}
		return b.String()
	}
	for _, e := range ents {
		if _, ok := e.at(t.Code, n); !ok {
			return nil, &UnpatchableError{Section: s.name,
				Reason: fmt.Sprintf("entry %d has no relocation at its code field (offset %d of %d-byte entries: the entry layout the builder assumes is not this kernel's)", e.idx, t.Code, n)}
		}
		if pattern(e) != pattern(ents[0]) {
			return nil, &UnpatchableError{Section: s.name,
				Reason: fmt.Sprintf("entries 0 and %d of %d bytes are relocated at different fields (the entry size the builder assumes is not this kernel's)", e.idx, n)}
		}
	}
	return ents, nil
}

// carryTables keeps, in each table section of the patched object, the entries whose
// code field points into an included section, and includes the section (add) when
// any is left. Tables with an Aux section go first: the pieces of the Aux section
// their carried entries reach are what is carried of it, and entries of other tables
// describing code in it count only inside those pieces. The rest of an Aux section's
// bytes are carried unrelocated: no carried entry points there, so nothing runs them.
func carryTables(r *Result, add func(*section)) error {
	p := r.patched
	byName := map[string]*section{}
	for _, s := range p.secs {
		if s.table && byName[s.name] == nil {
			byName[s.name] = s
		}
	}
	tables := append([]Table(nil), r.opts.Tables...)
	sort.SliceStable(tables, func(i, j int) bool { return tables[i].Aux != "" && tables[j].Aux == "" })
	pieces := map[*section][]span{}
	inPiece := func(s *section, off int64) bool {
		for _, sp := range pieces[s] {
			if off >= sp.from && off < sp.to {
				return true
			}
		}
		return false
	}
	auxDone := false
	finishAux := func() {
		auxDone = true
		for as, sps := range pieces {
			var keep []rela
			for _, rl := range as.relas {
				for _, sp := range sps {
					if int64(rl.off) >= sp.from && int64(rl.off)+int64(relocSize(rl.typ)) <= sp.to {
						keep = append(keep, rl)
						break
					}
				}
			}
			as.relas = keep
			add(as)
		}
	}
	for _, t := range tables {
		if t.Aux == "" && !auxDone {
			finishAux()
		}
		s := byName[t.Section]
		if s == nil || len(s.data) == 0 {
			continue
		}
		ents, err := tableEntries(s, t)
		if err != nil {
			return err
		}
		n := t.EntrySize
		var data []byte
		var relas []rela
		for _, e := range ents {
			code, _ := e.at(t.Code, n)
			ts := code.sym.sec
			if ts == nil || !ts.include || !ts.exec() {
				continue
			}
			if ts.table && !inPiece(ts, p.targetOffset(s, code)) {
				continue
			}
			if t.Aux != "" {
				ar, ok := e.at(t.AuxField, n)
				if !ok || ar.sym.sec == nil || ar.sym.sec.name != t.Aux {
					return &UnpatchableError{Function: funcName(ts), Section: s.name,
						Reason: fmt.Sprintf("entry %d does not point into %s at offset %d (the entry layout the builder assumes is not this kernel's)", e.idx, t.Aux, t.AuxField)}
				}
				from := p.targetOffset(s, ar)
				l := int64(s.data[e.idx*n+t.AuxLen])
				pieces[ar.sym.sec] = append(pieces[ar.sym.sec], span{from, from + l})
			}
			base := uint64(len(data))
			data = append(data, s.data[e.idx*n:(e.idx+1)*n]...)
			for _, rl := range e.relas {
				rl.off = base + rl.off - uint64(e.idx*n)
				relas = append(relas, rl)
			}
		}
		s.data, s.size, s.relas = data, uint64(len(data)), relas
		if len(data) > 0 {
			add(s)
		}
	}
	if !auxDone {
		finishAux()
	}
	return nil
}
