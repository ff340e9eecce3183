package builder

import (
	"debug/elf"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/runtime/elfsafe"
)

// linkGraph knows, from the recorded links, which files each object went into.
type linkGraph struct {
	// into maps a file to the link outputs and archives that contain it.
	into map[string][]string
	// final marks link outputs that are executables or shared libraries.
	final map[string]bool
	// archive marks static archives: the linker takes a member only if the link needs
	// one of its symbols.
	archive map[string]bool
	// defs caches the defined global symbols of a file (nil: unreadable).
	defs map[string]map[string]bool
}

// newLinkGraph builds the graph from the records. Archives are read back (their
// creation is not recorded, and may be done by ar, ranlib, libtool or a copy): a member
// is the object whose original content it holds, by sha256, whatever its name. known
// maps a content hash to the files that had it at the original build (the saved
// original of each compiled object, the output of each relocatable link); a thin
// archive's member is also the file it names.
func newLinkGraph(recs []capture.Record, known map[string][]string) *linkGraph {
	g := &linkGraph{into: map[string][]string{}, final: map[string]bool{},
		archive: map[string]bool{}, defs: map[string]map[string]bool{}}
	archives := map[string]bool{}
	for _, r := range recs {
		if r.Kind != capture.KindLink {
			continue
		}
		g.final[r.Output] = !relocatableLink(r)
		for _, in := range r.Inputs {
			g.add(in, r.Output)
			if strings.HasSuffix(in, ".a") || isArchiveFile(in) {
				archives[in] = true
			}
		}
	}
	for a := range archives {
		g.archive[a] = true
		members, err := readArchive(a)
		if err != nil && len(members) == 0 {
			continue
		}
		for _, m := range members {
			for _, o := range known[m.Hash] {
				g.add(o, a)
			}
			if m.Path != "" {
				g.add(m.Path, a)
			}
		}
	}
	return g
}

// contents maps the sha256 of each compiled object and each relocatable link output,
// as the files are now, to their paths; orig overrides an object's content with that of
// its saved original (the build directory holds the rebuilt one after buildPatched).
func contents(recs []capture.Record, orig map[string]string) map[string][]string {
	m := map[string][]string{}
	add := func(path, file string) {
		data, err := os.ReadFile(file)
		if err != nil {
			return
		}
		h := sha256Hex(data)
		if !slices.Contains(m[h], path) {
			m[h] = append(m[h], path)
		}
	}
	for _, r := range recs {
		switch {
		case r.Kind == capture.KindCompile && orig[r.Object] != "":
			add(r.Object, orig[r.Object])
		case r.Kind == capture.KindCompile:
			add(r.Object, r.Object)
		case r.Kind == capture.KindLink && relocatableLink(r):
			add(r.Output, r.Output)
		}
	}
	return m
}

func (g *linkGraph) add(from, to string) {
	if !slices.Contains(g.into[from], to) {
		g.into[from] = append(g.into[from], to)
	}
}

func relocatableLink(r capture.Record) bool {
	for _, a := range r.Args {
		if a == "-r" || a == "-Wl,-r" || a == "-Wl,--relocatable" {
			return true
		}
	}
	return false
}

// Finals returns the executables and shared libraries obj ends up in, following
// archives and relocatable links but never through a shared library into the programs
// that link against it (its code is not copied there). An object reached through an
// archive counts only if the linked file defines one of the object's global symbols:
// otherwise the linker left that member out (Lua's luac links liblua.a without its
// lutf8lib.o). When either file cannot be read the object counts.
func (g *linkGraph) Finals(obj string) []string {
	type node struct {
		path       string
		viaArchive bool
	}
	var out []string
	seen := map[string]bool{obj: true}
	queue := []node{{obj, false}}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		for _, next := range g.into[n.path] {
			if seen[next] {
				continue
			}
			seen[next] = true
			via := n.viaArchive || g.archive[n.path]
			if g.final[next] {
				if !via || g.linkedFrom(next, obj) {
					out = append(out, next)
				}
				continue
			}
			queue = append(queue, node{next, via})
		}
	}
	return out
}

// linkedFrom reports whether the linked file final defines a symbol that obj defines
// as global. A hidden global (Lua's LUAI_FUNC) is a local symbol of the linked file,
// which the linker lists after an unnamed file symbol, apart from the static symbols of
// the sources: those count too, a static of the same name elsewhere does not.
func (g *linkGraph) linkedFrom(final, obj string) bool {
	have, want := g.symbolDefs(final, true), g.symbolDefs(obj, false)
	if have == nil || want == nil {
		return true
	}
	for s := range want {
		if have[s] {
			return true
		}
	}
	return false
}

// symbolDefs returns the names of the global and weak symbols path defines (with
// hidden, of the locals the linker made of hidden globals too), from its symbol table
// or else its dynamic one; nil if it has neither or cannot be read.
func (g *linkGraph) symbolDefs(path string, hidden bool) map[string]bool {
	key := fmt.Sprintf("%t:%s", hidden, path)
	if d, ok := g.defs[key]; ok {
		return d
	}
	var defs map[string]bool
	if f, err := elfsafe.Open(path); err == nil {
		syms, err := elfsafe.Symbols(f.File)
		if err != nil || len(syms) == 0 {
			syms, err = elfsafe.DynamicSymbols(f.File)
		}
		if err == nil && len(syms) > 0 {
			defs = map[string]bool{}
			linkerLocals := false
			for _, s := range syms {
				bind := elf.ST_BIND(s.Info)
				typ := elf.ST_TYPE(s.Info)
				if typ == elf.STT_FILE {
					linkerLocals = s.Name == ""
					continue
				}
				if s.Section != elf.SHN_UNDEF && s.Name != "" && typ != elf.STT_SECTION &&
					(bind == elf.STB_GLOBAL || bind == elf.STB_WEAK || (hidden && bind == elf.STB_LOCAL && linkerLocals)) {
					defs[s.Name] = true
				}
			}
		}
		f.Close()
	}
	g.defs[key] = defs
	return defs
}
