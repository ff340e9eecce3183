package builder

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// newLinkGraph builds the graph from the records; archives (whose creation is not
// recorded) are read to learn which objects they hold.
func newLinkGraph(recs []capture.Record) *linkGraph {
	g := &linkGraph{into: map[string][]string{}, final: map[string]bool{},
		archive: map[string]bool{}, defs: map[string]map[string]bool{}}
	objects := map[string][]string{} // base name -> compiled objects
	for _, r := range recs {
		if r.Kind == capture.KindCompile && !slices.Contains(objects[filepath.Base(r.Object)], r.Object) {
			objects[filepath.Base(r.Object)] = append(objects[filepath.Base(r.Object)], r.Object)
		}
	}
	archives := map[string]bool{}
	for _, r := range recs {
		if r.Kind != capture.KindLink {
			continue
		}
		g.final[r.Output] = !relocatableLink(r)
		for _, in := range r.Inputs {
			g.add(in, r.Output)
			if strings.HasSuffix(in, ".a") {
				archives[in] = true
			}
		}
	}
	for a := range archives {
		g.archive[a] = true
		members, err := archiveMembers(a)
		if err != nil {
			continue
		}
		for _, m := range members {
			cands := objects[m]
			var same []string
			for _, o := range cands {
				if filepath.Dir(o) == filepath.Dir(a) {
					same = append(same, o)
				}
			}
			if len(same) > 0 {
				cands = same
			}
			for _, o := range cands {
				g.add(o, a)
			}
		}
	}
	return g
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

// linkedFrom reports whether the linked file final defines a global symbol that obj
// defines.
func (g *linkGraph) linkedFrom(final, obj string) bool {
	have, want := g.globalDefs(final), g.globalDefs(obj)
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

// globalDefs returns the names of the global and weak symbols path defines, from its
// symbol table or else its dynamic one; nil if it has neither or cannot be read.
func (g *linkGraph) globalDefs(path string) map[string]bool {
	if d, ok := g.defs[path]; ok {
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
			for _, s := range syms {
				bind := elf.ST_BIND(s.Info)
				if s.Section != elf.SHN_UNDEF && s.Name != "" && (bind == elf.STB_GLOBAL || bind == elf.STB_WEAK) {
					defs[s.Name] = true
				}
			}
		}
		f.Close()
	}
	g.defs[path] = defs
	return defs
}

// archiveMembers lists the member names of a System V / GNU ar archive.
func archiveMembers(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseArchive(data)
}

func parseArchive(data []byte) ([]string, error) {
	const magic = "!<arch>\n"
	if !bytes.HasPrefix(data, []byte(magic)) {
		return nil, fmt.Errorf("not an ar archive")
	}
	var names []string
	var longNames []byte
	off := len(magic)
	for off+60 <= len(data) {
		hdr := data[off : off+60]
		name := strings.TrimRight(string(hdr[0:16]), " ")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || int64(off+60)+size > int64(len(data)) {
			return names, fmt.Errorf("ar member header at %d: %w", off, io.ErrUnexpectedEOF)
		}
		body := data[off+60 : off+60+int(size)]
		switch {
		case name == "/" || name == "/SYM64/":
		case name == "//":
			longNames = body
		case strings.HasPrefix(name, "/"):
			i, err := strconv.Atoi(name[1:])
			if err == nil && i >= 0 && i < len(longNames) {
				n := longNames[i:]
				if j := bytes.IndexAny(n, "/\n"); j >= 0 {
					n = n[:j]
				}
				names = append(names, string(n))
			}
		default:
			names = append(names, strings.TrimSuffix(name, "/"))
		}
		off += 60 + int(size)
		if off%2 == 1 {
			off++
		}
	}
	return names, nil
}
