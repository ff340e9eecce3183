package builder

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/runtime/elfsafe"
)

// A changed C++ inline function, in-class member function or template instance has
// vague linkage: every object that uses it may hold a copy in a COMDAT group, the
// linker keeps the first copy in link order, and callers may have inlined it. Before
// any of it goes into a patch, settleVague proves from the link records, for each
// final binary, which object's copy the binary kept (by comparing the binary's bytes
// with each object's copy), that this object is rebuilt, and that no object of the
// link that is not rebuilt inlined the old body; then it lets the kept object's
// fragment carry the replacement and drops the copies of the others, whose
// references bind to it by name.

// objectResult is the differ's result for one rebuilt object in one final binary,
// kept until the vague-linkage functions are settled.
type objectResult struct {
	t    *tu
	tp   *targetPatch
	out  string // the final link output (build tree)
	file string
	r    *diff.Result
	// dropped: a vague function of it is carried by another object's fragment.
	dropped bool
}

// linkedObject is one relocatable object read by a final link.
type linkedObject struct {
	path  string // as the link saw it (build tree); "lib.a(member.o)" for an archive member
	saved string // the original's content (the saved copy for a rebuilt object)
	data  []byte // the content of an archive member no recorded compile made
	t     *tu    // nil: not compiled by the recorded build
	order int
}

func (o *linkedObject) read() ([]byte, error) {
	if o.data != nil {
		return o.data, nil
	}
	return os.ReadFile(o.saved)
}

// settleVague decides the carrier of each changed vague-linkage function per final
// binary, or refuses with the function and the object that stand in the way. A
// refusal is also put into the report of the binary concerned.
func (b *build) settleVague(g *linkGraph, results []*objectResult) ([]string, error) {
	type key struct {
		tp  *targetPatch
		out string
	}
	groups := map[key][]*objectResult{}
	var keys []key
	for _, od := range results {
		k := key{od.tp, od.out}
		if groups[k] == nil {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], od)
	}
	var notes []string
	for _, k := range keys {
		n, err := b.settleBinary(g, k.out, groups[k])
		notes = append(notes, n...)
		if err != nil {
			if ue, ok := err.(*diff.UnpatchableError); ok {
				k.tp.parts = append(k.tp.parts, diff.ReportError(relTo(b.buildDir, k.out), ue))
			}
			return notes, fmt.Errorf("%s (%s): %w", relTo(b.buildDir, k.out), k.tp.target.Path, err)
		}
	}
	return notes, nil
}

func (b *build) settleBinary(g *linkGraph, out string, ods []*objectResult) ([]string, error) {
	changedIn := map[string][]*objectResult{}
	var names []string
	for _, od := range ods {
		for _, n := range od.r.Vague() {
			if changedIn[n] == nil {
				names = append(names, n)
			}
			changedIn[n] = append(changedIn[n], od)
		}
	}
	sort.Strings(names)
	objs, err := b.linkedObjects(g, out)
	if err != nil {
		return nil, err
	}
	bin := relTo(b.buildDir, out)
	// No object of the link that the fix does not rebuild may hold an inlined copy of
	// a function of a changed file: the patch would leave that caller running the old
	// code. Rebuilt objects carry their changed callers themselves.
	changed := b.changedFiles()
	var notes []string
	var linked []diff.LinkedObject
	for _, o := range objs {
		lo := diff.LinkedObject{Name: b.rel(o.path), Rebuilt: o.t != nil && o.t.patched != "", Recorded: o.t != nil}
		if !lo.Rebuilt {
			data, err := o.read()
			if err != nil {
				return nil, err
			}
			if lo.Use, err = diff.FileUses(bytes.NewReader(data), changed); err != nil {
				return nil, fmt.Errorf("object %s: %w", o.path, err)
			}
			if lo.Use.NoDWARF && !lo.Recorded {
				notes = append(notes, fmt.Sprintf("%s: %s has no debug information: whether it was compiled with a file the fix changes is not known", bin, lo.Name))
			}
		}
		linked = append(linked, lo)
	}
	if err := diff.CheckInliners(linked); err != nil {
		return notes, err
	}
	if len(names) == 0 {
		return notes, nil
	}
	uses := map[*linkedObject]map[string]diff.VagueUse{}
	for _, o := range objs {
		data, err := o.read()
		if err != nil {
			return nil, err
		}
		u, err := diff.VagueUses(bytes.NewReader(data), names)
		if err != nil {
			return nil, fmt.Errorf("object %s: %w", o.path, err)
		}
		uses[o] = u
	}
	code, err := linkedFunctions(out, names)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", bin, err)
	}
	for _, n := range names {
		c, ok := code[n]
		if !ok {
			// Every use was inlined or the linker dropped it: nothing to replace; the
			// callers that inlined it are changed functions of their own.
			for _, od := range changedIn[n] {
				od.r.Drop(n)
				od.dropped = true
			}
			notes = append(notes, fmt.Sprintf("%s: %s has no out-of-line copy of %s; its inlined copies are patched in their callers", bin, bin, n))
			continue
		}
		var kept *linkedObject
		var holders []string
		for _, o := range objs {
			if !uses[o][n].Defines {
				continue
			}
			holders = append(holders, b.rel(o.path))
			if kept != nil {
				continue
			}
			data, err := o.read()
			if err != nil {
				return nil, err
			}
			same, err := diff.SameCode(c, bytes.NewReader(data), n)
			if err != nil {
				return nil, fmt.Errorf("object %s: %w", o.path, err)
			}
			if same {
				kept = o
			}
		}
		if kept == nil {
			return nil, &diff.UnpatchableError{Function: n, Section: "-", Reason: fmt.Sprintf(
				"%s kept a definition of %s (%d bytes) that matches none of the copies in %s: which object's copy it holds cannot be proven",
				bin, n, len(c), orNone(holders))}
		}
		var carrier *objectResult
		for _, od := range changedIn[n] {
			if od.t == kept.t {
				carrier = od
			}
		}
		if carrier == nil {
			why := "which the fix does not rebuild"
			if kept.t != nil && kept.t.patched != "" {
				why = "whose rebuilt copy did not change (the copies of the objects disagree after the fix)"
			}
			return nil, &diff.UnpatchableError{Function: n, Section: "-", Reason: fmt.Sprintf(
				"%s kept the definition of %s from %s, %s", bin, n, b.rel(kept.path), why)}
		}
		for _, od := range changedIn[n] {
			if od != carrier {
				od.r.Drop(n)
				od.dropped = true
			}
		}
		notes = append(notes, fmt.Sprintf("%s: vague-linkage %s: the binary kept the copy of %s (same %d bytes; copies in %s); replaced from it",
			bin, n, b.rel(kept.path), len(c), strings.Join(holders, ", ")))
	}
	return notes, nil
}

func (b *build) rel(p string) string { return relTo(b.buildDir, p) }

// changedFiles tells whether a source file path, as an object's DWARF names it, is one
// the fix changed: a dependency of a rebuilt unit whose content differs from the
// original build's. DWARF may name it relative to the build directory.
func (b *build) changedFiles() func(string) bool {
	abs := map[string]bool{}
	var rels []string
	cache := map[string]string{}
	for _, t := range b.tus {
		if t.patched == "" {
			continue
		}
		for d, h := range t.hashes {
			if abs[d] || hashCached(cache, d) == h {
				continue
			}
			abs[d] = true
			if r := relTo(b.buildDir, d); r != d {
				rels = append(rels, "/"+r)
			}
		}
	}
	return func(p string) bool {
		p = filepath.Clean(p)
		if abs[p] {
			return true
		}
		for _, r := range rels {
			if strings.HasSuffix(p, r) {
				return true
			}
		}
		return false
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "no object of the link"
	}
	return strings.Join(s, ", ")
}

// linkedObjects lists the relocatable objects that went into the final link out, in
// link order as far as the record tells it: the objects the build compiled (directly,
// through archives or relocatable links), and objects the link read that no recorded
// compile made (shipped prebuilt, or built by a tool the capture does not see).
func (b *build) linkedObjects(g *linkGraph, out string) ([]*linkedObject, error) {
	recs, err := b.cap.Records()
	if err != nil {
		return nil, err
	}
	var rec *capture.Record
	for i := range recs {
		if recs[i].Kind == capture.KindLink && recs[i].Output == out && !relocatableLink(recs[i]) {
			rec = &recs[i]
		}
	}
	pos := map[string]int{}
	if rec != nil {
		for i, in := range rec.Inputs {
			if _, ok := pos[in]; !ok {
				pos[in] = i
			}
		}
	}
	byObj := map[string]*tu{}
	for _, t := range b.tus {
		byObj[t.rec.Object] = t
	}
	var objs []*linkedObject
	for _, t := range b.tus {
		if !containsStr(g.Finals(t.rec.Object), out) {
			continue
		}
		order := len(pos) + t.idx
		if p, ok := pos[t.rec.Object]; ok {
			order = p
		} else {
			// Through an archive or a relocatable link: that input's position.
			for _, via := range g.into[t.rec.Object] {
				if p, ok := pos[via]; ok {
					order = p
					break
				}
			}
		}
		objs = append(objs, &linkedObject{path: t.rec.Object, saved: t.orig, t: t, order: order})
	}
	if rec != nil {
		known := map[string]bool{}
		for h := range contents(recs, b.originals()) {
			known[h] = true
		}
		for i, in := range rec.Inputs {
			if byObj[in] != nil {
				continue
			}
			if _, ok := b.relocOutput(recs, in); ok {
				continue // a relocatable link of recorded objects: they are listed
			}
			if isRelocatable(in) {
				objs = append(objs, &linkedObject{path: in, saved: in, order: i})
				continue
			}
			// An archive of the build tree may hold members no recorded compile made.
			if !isArchiveFile(in) || relTo(b.buildDir, in) == in {
				continue
			}
			members, err := readArchive(in)
			if err != nil {
				return nil, fmt.Errorf("archive %s: %w", in, err)
			}
			for _, m := range members {
				if m.Data != nil && !known[m.Hash] && bytes.HasPrefix(m.Data, []byte("\x7fELF")) && memberLinked(g, out, m.Data) {
					objs = append(objs, &linkedObject{path: in + "(" + m.Name + ")", data: m.Data, order: i})
				}
			}
		}
	}
	sort.SliceStable(objs, func(i, j int) bool { return objs[i].order < objs[j].order })
	return objs, nil
}

func (b *build) relocOutput(recs []capture.Record, path string) (capture.Record, bool) {
	for _, r := range recs {
		if r.Kind == capture.KindLink && r.Output == path && relocatableLink(r) {
			return r, true
		}
	}
	return capture.Record{}, false
}

// memberLinked tells whether the linker took the archive member data into the final
// link out: out defines one of the member's global symbols (weak ones do not count:
// inline functions have copies everywhere), as linkGraph.linkedFrom decides for
// recorded objects. Unreadable files count as linked.
func memberLinked(g *linkGraph, out string, data []byte) bool {
	have := g.symbolDefs(out, true)
	f, err := elfsafe.NewFile(bytes.NewReader(data))
	if err != nil || have == nil {
		return true
	}
	syms, err := elfsafe.Symbols(f)
	if err != nil {
		return true
	}
	for _, y := range syms {
		b := elf.ST_BIND(y.Info)
		if y.Section != elf.SHN_UNDEF && y.Name != "" && b == elf.STB_GLOBAL && have[y.Name] {
			return true
		}
	}
	return false
}

// isRelocatable tells an ELF relocatable object (ET_REL) from archives, shared
// libraries and scripts.
func isRelocatable(path string) bool {
	if filepath.Ext(path) == ".so" || strings.Contains(filepath.Base(path), ".so.") {
		return false
	}
	f, err := elfsafe.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Type == elf.ET_REL
}

// linkedFunctions reads the code of the named functions from the linked ELF path (its
// .symtab, else .dynsym); a name it does not define is absent from the result.
func linkedFunctions(path string, names []string) (map[string][]byte, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := elfsafe.Symbols(f.File)
	if err != nil || len(syms) == 0 {
		syms, err = elfsafe.DynamicSymbols(f.File)
	}
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string][]byte{}
	for _, s := range syms {
		if !want[s.Name] || elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Section == elf.SHN_UNDEF || int(s.Section) >= len(f.Sections) {
			continue
		}
		if _, dup := out[s.Name]; dup {
			continue
		}
		sec := f.Sections[s.Section]
		if sec.Type != elf.SHT_PROGBITS || s.Value < sec.Addr || s.Value+s.Size > sec.Addr+sec.Size {
			continue
		}
		buf := make([]byte, s.Size)
		if _, err := sec.ReadAt(buf, int64(s.Value-sec.Addr)); err != nil {
			return nil, fmt.Errorf("symbol %s: %w", s.Name, err)
		}
		out[s.Name] = buf
	}
	return out, nil
}
