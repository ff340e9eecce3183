package kernel

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/runtime/elfsafe"
)

// Diff compares the original and patched object of tu with rpmbuild/diff under the
// kernel's rules and returns the differ's result and its patch object. The kernel's
// table sections the module does without are set aside first (they index code, they
// are not data the new code uses), and the differ carries the entries of the tables
// the module needs (carriedTables) for the functions it carries; then come the
// kernel's refusals: a changed exported-symbol table and changed __init code or data.
// Refusals are *diff.UnpatchableError naming function, section and reason; an
// unchanged object gives diff.ErrNoChange. loc places the local symbols of the object
// the unit is linked into (vmlinux or the module).
func Diff(ctx context.Context, log io.Writer, tu TU, orig, patched, work string, loc diff.Locator) (*diff.Result, []byte, error) {
	presentO, err := kernelTables(orig)
	if err != nil {
		return nil, nil, err
	}
	presentP, err := kernelTables(patched)
	if err != nil {
		return nil, nil, err
	}
	if eo, ep := exportTable(presentO), exportTable(presentP); strings.Join(eo, " ") != strings.Join(ep, " ") {
		return nil, nil, &diff.UnpatchableError{Function: strings.Join(symDiff(eo, ep), " "), Section: "__ksymtab",
			Reason: "the fix changes the kernel's exported-symbol table; a live patch cannot add or remove exports"}
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, nil, err
	}
	so, sp := filepath.Join(work, "orig.o"), filepath.Join(work, "patched.o")
	if err := stripTables(ctx, log, orig, so, union(presentO, presentP)); err != nil {
		return nil, nil, err
	}
	if err := stripTables(ctx, log, patched, sp, union(presentO, presentP)); err != nil {
		return nil, nil, err
	}
	if err := initChanges(so, sp); err != nil {
		return nil, nil, err
	}
	ob, err := os.ReadFile(so)
	if err != nil {
		return nil, nil, err
	}
	pb, err := os.ReadFile(sp)
	if err != nil {
		return nil, nil, err
	}
	h := fnv.New32a()
	h.Write([]byte(tu.Source))
	r, err := diff.Diff(bytes.NewReader(ob), bytes.NewReader(pb), diff.Options{Locator: loc, Tables: carriedTables, Owned: ownedSections,
		AliasPrefix: fmt.Sprintf("__syscare_klp_%08x_", h.Sum32())})
	if err != nil {
		return r, nil, err
	}
	obj, err := r.Object()
	if err != nil {
		return r, nil, fmt.Errorf("emit patch object: %w", err)
	}
	return r, obj, nil
}

// initChanges refuses a fix that changes __init code or data: it ran at boot and never
// runs again, and its memory is freed. Functions are compared by their bytes in
// .init.text (relocations aside: a changed call target is a changed function too, but
// a function whose code is the same is not reported).
func initChanges(orig, patched string) error {
	fo, err := initFuncs(orig)
	if err != nil {
		return err
	}
	fp, err := initFuncs(patched)
	if err != nil {
		return err
	}
	var changed []string
	for name, code := range fp {
		if old, ok := fo[name]; !ok || !bytes.Equal(old, code) {
			changed = append(changed, name)
		}
	}
	if len(changed) > 0 {
		sort.Strings(changed)
		return &diff.UnpatchableError{Function: strings.Join(changed, " "), Section: ".init.text",
			Reason: "__init code changed: it ran once at boot and its memory is freed; a live patch cannot change it"}
	}
	return nil
}

// initFuncs maps the functions of the object's .init.text sections to their bytes.
func initFuncs(path string) (map[string][]byte, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, err
	}
	out := map[string][]byte{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || int(s.Section) >= len(f.Sections) || s.Section == elf.SHN_UNDEF {
			continue
		}
		sec := f.Sections[s.Section]
		if !strings.HasPrefix(sec.Name, ".init.text") {
			continue
		}
		data, err := sec.Data()
		if err != nil || s.Value+s.Size > uint64(len(data)) {
			return nil, fmt.Errorf("%s: %s: bad symbol %s", path, sec.Name, s.Name)
		}
		out[s.Name] = data[s.Value : s.Value+s.Size]
	}
	return out, nil
}

func union(a, b []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range [][]string{a, b} {
		for _, s := range l {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	sort.Strings(out)
	return out
}

// symDiff lists the names in only one of a and b.
func symDiff(a, b []string) []string {
	in := map[string]int{}
	for _, s := range a {
		in[s] |= 1
	}
	for _, s := range b {
		in[s] |= 2
	}
	var out []string
	for s, m := range in {
		if m != 3 {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}
