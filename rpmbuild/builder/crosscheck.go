package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
)

// ErrUncovered: a shipped binary changes in a way the patch does not carry (the
// cross-check's finding). The message names the binary and the function or object.
var ErrUncovered = errors.New("shipped binary differs beyond the patch")

// BinaryStatus is what the build found for one shipped ELF.
type BinaryStatus struct {
	// Path is the installed path.
	Path string `json:"path"`
	// Replaced are the functions the patch replaces in it; New the functions only the
	// patched link has.
	Replaced []string `json:"replaced"`
	New      []string `json:"new"`
	// Unchanged counts the functions that compare equal in both links.
	Unchanged int `json:"unchanged"`
	// Patched: the patch RPM carries a patch object for it.
	Patched bool `json:"patched"`
	// Checked: the cross-check compared both links; Note says why not, or remarks.
	Checked bool   `json:"checked"`
	Note    string `json:"note,omitempty"`
}

// Line is the status in one line for the report.
func (s BinaryStatus) Line() string {
	var b strings.Builder
	b.WriteString(s.Path + ": ")
	switch {
	case s.Patched:
		fmt.Fprintf(&b, "replaced %s", list(s.Replaced))
	default:
		b.WriteString("needs nothing replaced, no patch object")
	}
	fmt.Fprintf(&b, "; new %s", list(s.New))
	if s.Checked {
		fmt.Fprintf(&b, "; %d unchanged", s.Unchanged)
	}
	if s.Note != "" {
		b.WriteString("; " + s.Note)
	}
	return b.String()
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ", ")
}

// The cross-check is the last word before any verdict. Whatever the link graph and the
// differ concluded, each shipped binary is linked twice more in a scratch directory by
// its recorded link command: once from the original objects and once from the rebuilt
// ones (archives the command reads are rewritten with the rebuilt members, found by
// content; relocatable links on the way are replayed too). The two links are compared
// function by function (elfcmp.go). A difference the patch does not carry is an error
// naming the binary and the function, so "no functional change" is only said when no
// shipped binary changes. A binary none of whose inputs changed is not linked again:
// both links would read the same files.

// replaySide is one of the two links: which file stands for which.
type replaySide struct {
	name string
	dir  string
	// byPath maps a rebuilt object's path in the build tree to the file to use.
	byPath map[string]string
	// byHash maps an original object's content hash to the file to use.
	byHash map[string]string
	mu     sync.Mutex
	done   map[string]replayed
	seq    int
}

type replayed struct {
	path    string
	changed bool
	err     error
}

type crossCheck struct {
	b *build
	// relocs are the relocatable links by output, and by the output's content hash.
	relocs      map[string]capture.Record
	relocByHash map[string]string
	sides       [2]*replaySide
}

// crossCheckStep compares every shipped binary's original and patched link and then
// gives the verdict.
func (b *build) crossCheckStep(ctx context.Context) (string, error) {
	recs, err := b.cap.Records()
	if err != nil {
		return "", err
	}
	cc := &crossCheck{b: b, relocs: map[string]capture.Record{}, relocByHash: map[string]string{}}
	lastLink := map[string]capture.Record{}
	var order []string
	for _, r := range recs {
		if r.Kind != capture.KindLink {
			continue
		}
		if relocatableLink(r) {
			cc.relocs[r.Output] = r
			if data, err := os.ReadFile(r.Output); err == nil {
				cc.relocByHash[sha256Hex(data)] = r.Output
			}
			continue
		}
		if _, ok := lastLink[r.Output]; !ok {
			order = append(order, r.Output)
		}
		lastLink[r.Output] = r
	}
	for i, name := range []string{"orig", "patched"} {
		s := &replaySide{name: name, dir: filepath.Join(b.work, "crosscheck", name),
			byPath: map[string]string{}, byHash: map[string]string{}, done: map[string]replayed{}}
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			return "", err
		}
		for _, t := range b.tus {
			if t.patched == "" {
				continue
			}
			data, err := os.ReadFile(t.orig)
			if err != nil {
				return "", err
			}
			use := t.orig
			if i == 1 {
				use = t.patched
			}
			s.byPath[t.rec.Object] = use
			s.byHash[sha256Hex(data)] = use
		}
		cc.sides[i] = s
	}

	// Each shipped target, with the links that make a file of its name.
	type job struct {
		tg  *debuginfo.Target
		rec capture.Record
	}
	var jobs []job
	for _, out := range order {
		tg, err := b.shippedAs(out)
		if errors.Is(err, debuginfo.ErrNotFound) {
			continue
		}
		if err != nil {
			return "", err
		}
		jobs = append(jobs, job{tg, lastLink[out]})
	}
	status := map[*debuginfo.Target]*BinaryStatus{}
	var problems, unchecked []string
	relinked := 0
	for _, j := range jobs {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		st := status[j.tg]
		if st == nil {
			st = &BinaryStatus{Path: j.tg.Path, Checked: true}
			status[j.tg] = st
		}
		d, did, err := cc.check(ctx, j.rec)
		if did {
			relinked++
		}
		if err != nil {
			fmt.Fprintf(b.logw, "cross-check of %s (%s): %v\n", j.tg.Path, relTo(b.buildDir, j.rec.Output), err)
			st.Checked = false
			st.Note = fmt.Sprintf("not cross-checked: %v", err)
			unchecked = append(unchecked, fmt.Sprintf("%s: %v", j.tg.Path, err))
			continue
		}
		tp := b.patchOf(j.tg)
		var replaced []string
		if tp != nil {
			replaced = append(replaced, tp.changed...)
			// The differ leaves out, on purpose, functions whose code differs only in
			// line numbers (__LINE__ in an assertion's message): known, not missed.
			if tp.report != nil {
				replaced = append(replaced, tp.report.LineOnly...)
			}
		}
		for _, f := range d.Changed {
			if !covers(replaced, f.Name) {
				problems = append(problems, fmt.Sprintf("%s: function %s differs in the patched build but the patch does not replace it", j.tg.Path, f.label()))
			}
		}
		for _, v := range d.ChangedData {
			problems = append(problems, fmt.Sprintf("%s: data object %s has another initial value in the patched build; a patch cannot change data", j.tg.Path, v.label()))
		}
		st.Unchanged += d.Same
		for _, f := range d.New {
			if !containsStr(st.New, f.Name) {
				st.New = append(st.New, f.Name)
			}
		}
		fmt.Fprintf(b.logw, "cross-check %s (%s): %d changed, %d new, %d removed, %d data changed, %d same\n", j.tg.Path,
			relTo(b.buildDir, j.rec.Output), len(d.Changed), len(d.New), len(d.Removed), len(d.ChangedData), d.Same)
	}
	b.res.Binaries = nil
	for i := range b.index.Targets {
		tg := &b.index.Targets[i]
		st := status[tg]
		if st == nil {
			// Made by something the capture does not see (another compiler or linker,
			// a copy under another name): nothing is known of what went into it.
			st = &BinaryStatus{Path: tg.Path, Note: "not cross-checked: no recorded link makes a file of that name"}
			unchecked = append(unchecked, tg.Path+": no recorded link makes a file of that name")
		}
		if tp := b.patchOf(tg); tp != nil && len(tp.changed) > 0 {
			st.Patched = true
			st.Replaced = append([]string(nil), tp.changed...)
			if !st.Checked {
				st.New = tp.new
			}
		}
		b.res.Binaries = append(b.res.Binaries, *st)
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("%w:\n  %s", ErrUncovered, strings.Join(problems, "\n  "))
	}
	if err := b.verdict(unchecked); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d shipped binaries, %d linked again twice", len(b.index.Targets), relinked), nil
}

// covers tells whether a difference of function name is carried by a patch replacing
// replaced: the function itself (GCC's numbering aside), or the cold part of one.
func covers(replaced []string, name string) bool {
	n := normName(name)
	n = strings.TrimSuffix(n, ".cold")
	for _, r := range replaced {
		if normName(r) == n || normName(r) == normName(name) {
			return true
		}
	}
	return false
}

func containsStr(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// check links rec's output twice when any of its inputs changed and compares them.
// did tells whether it linked.
func (cc *crossCheck) check(ctx context.Context, rec capture.Record) (*binDiff, bool, error) {
	// The patched side decides whether anything the link reads changed.
	var outs [2]string
	var errs [2]error
	var changed [2]bool
	var wg sync.WaitGroup
	for i, s := range cc.sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := cc.replay(ctx, s, rec, true)
			outs[i], changed[i], errs[i] = r.path, r.changed, r.err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, true, err
		}
	}
	if !changed[0] && !changed[1] {
		// Nothing it reads changed: every function is the build tree's.
		d := &binDiff{}
		if l, err := openLinked(rec.Output); err == nil {
			for _, s := range l.syms {
				if s.Kind == kindFunc {
					d.Same++
				}
			}
			l.Close()
		}
		return d, false, nil
	}
	d, err := compareLinked(outs[0], outs[1])
	return d, true, err
}

// replay links rec again for side s when an input changed or cannot be seen through
// (a linker script); otherwise it returns the build tree's output, unchanged. final
// links keep their relocations (--emit-relocs) for the comparison.
func (cc *crossCheck) replay(ctx context.Context, s *replaySide, rec capture.Record, final bool) replayed {
	s.mu.Lock()
	if r, ok := s.done[rec.Output]; ok {
		s.mu.Unlock()
		return r
	}
	s.done[rec.Output] = replayed{path: rec.Output, err: errors.New("link depends on itself")}
	s.seq++
	out := filepath.Join(s.dir, fmt.Sprintf("%d-%s", s.seq, filepath.Base(rec.Output)))
	s.mu.Unlock()
	r := cc.relink(ctx, s, rec, out, final)
	s.mu.Lock()
	s.done[rec.Output] = r
	s.mu.Unlock()
	return r
}

// stripFlags would leave the replayed link without the symbols the comparison reads.
var stripFlags = map[string]bool{"-s": true, "-Wl,-s": true, "-Wl,--strip-all": true, "-Wl,-S": true,
	"-Wl,--strip-debug": true, "-Wl,-x": true, "-Wl,--discard-all": true}

func (cc *crossCheck) relink(ctx context.Context, s *replaySide, rec capture.Record, out string, final bool) replayed {
	// Response files are read here, so that the objects they name are substituted too.
	recArgs, err := expandResponseFiles(rec.Dir, rec.Args, 0)
	if err != nil {
		return replayed{err: err}
	}
	rec.Args = recArgs
	var dirs []string
	for i := 0; i < len(rec.Args); i++ {
		a := rec.Args[i]
		switch {
		case a == "-L" && i+1 < len(rec.Args):
			dirs = append(dirs, rec.Args[i+1])
			i++
		case strings.HasPrefix(a, "-L") && len(a) > 2:
			dirs = append(dirs, a[2:])
		case capture.TakesValue(a):
			i++
		}
	}
	changed := false
	var args []string
	var useErr error
	use := func(p string) string {
		np, c, opaque, err := cc.substitute(ctx, s, p)
		if err == nil && opaque {
			err = fmt.Errorf("input %s is neither an object nor an archive (a linker script?): the objects it names cannot be substituted", p)
		}
		if err != nil {
			if useErr == nil {
				useErr = err
			}
			return p
		}
		changed = changed || c
		return np
	}
	for i := 0; i < len(rec.Args); i++ {
		a := rec.Args[i]
		switch {
		case a == "-o" && i+1 < len(rec.Args):
			args = append(args, "-o", out)
			i++
		case strings.HasPrefix(a, "-o") && len(a) > 2:
			args = append(args, "-o", out)
		case a == "-l" && i+1 < len(rec.Args):
			if p := capture.FindLib(rec.Dir, rec.Args[i+1], dirs); p != "" {
				if np := use(p); np != p {
					args = append(args, np)
					i++
					continue
				}
			}
			args = append(args, a, rec.Args[i+1])
			i++
		case strings.HasPrefix(a, "-l") && len(a) > 2:
			if p := capture.FindLib(rec.Dir, a[2:], dirs); p != "" {
				if np := use(p); np != p {
					args = append(args, np)
					continue
				}
			}
			args = append(args, a)
		case strings.HasPrefix(a, "-Wl,"):
			parts := strings.Split(a[4:], ",")
			for k, part := range parts {
				if strings.HasPrefix(part, "@") && useErr == nil {
					useErr = fmt.Errorf("linker response file %s: its inputs cannot be substituted", part[1:])
				}
				if !strings.HasPrefix(part, "-") && part != "" {
					// Only a substituted file replaces the word: a soname stays as it is.
					if p := absIn(rec.Dir, part); isFile(p) && looksLikeInput(p) {
						if np := use(p); np != p {
							parts[k] = np
						}
					}
				}
			}
			if final && stripFlags[a] {
				continue
			}
			args = append(args, "-Wl,"+strings.Join(parts, ","))
		case final && stripFlags[a]:
		case capture.TakesValue(a) && i+1 < len(rec.Args):
			args = append(args, a, rec.Args[i+1])
			i++
		case strings.HasPrefix(a, "-"):
			args = append(args, a)
		default:
			args = append(args, use(absIn(rec.Dir, a)))
		}
	}
	if useErr != nil {
		return replayed{err: useErr}
	}
	if !changed {
		return replayed{path: rec.Output}
	}
	if final {
		args = append(args, "-Wl,--emit-relocs")
	}
	cc0 := cc.b.cap.RealCC
	if rec.Lang == "c++" && cc.b.cap.RealCXX != "" {
		cc0 = cc.b.cap.RealCXX
	}
	cmd := exec.CommandContext(ctx, cc0, args...)
	cmd.Dir = rec.Dir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return replayed{err: fmt.Errorf("link %s again: %w: %s", filepath.Base(rec.Output), err, strings.TrimSpace(buf.String()))}
	}
	return replayed{path: out, changed: true}
}

// expandResponseFiles replaces each @file argument by the arguments the file holds, as
// gcc reads them (words split at white space, quotes and backslashes honoured). An
// @file that cannot be read stays as it is, as gcc keeps it.
func expandResponseFiles(dir string, args []string, depth int) ([]string, error) {
	var out []string
	for _, a := range args {
		if !strings.HasPrefix(a, "@") || len(a) == 1 {
			out = append(out, a)
			continue
		}
		data, err := os.ReadFile(absIn(dir, a[1:]))
		if err != nil {
			out = append(out, a)
			continue
		}
		if depth > 8 {
			return nil, fmt.Errorf("response file %s: nested too deep", a[1:])
		}
		words, err := expandResponseFiles(dir, splitResponse(string(data)), depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, words...)
	}
	return out, nil
}

func splitResponse(s string) []string {
	var words []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			in = true
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, in = c, true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

func absIn(dir, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// looksLikeInput tells -Wl, operands that are link inputs (objects, archives, scripts)
// from option values such as a soname.
func looksLikeInput(p string) bool {
	switch filepath.Ext(p) {
	case ".o", ".a", ".so", ".lo", ".ld", ".lds", ".map":
		return true
	}
	return strings.Contains(filepath.Base(p), ".so.")
}

// substitute returns the file side s uses for the build-tree input p: a rebuilt object,
// a replayed relocatable link, a rewritten archive, or p itself. opaque marks a text
// input (a linker script such as an INPUT() .so) that may name objects itself.
func (cc *crossCheck) substitute(ctx context.Context, s *replaySide, p string) (string, bool, bool, error) {
	if f, ok := s.byPath[p]; ok {
		return f, true, false, nil
	}
	if rec, ok := cc.relocs[p]; ok {
		r := cc.replay(ctx, s, rec, false)
		if r.err != nil {
			return p, false, false, r.err
		}
		return r.path, r.changed, false, nil
	}
	head := make([]byte, 8)
	f, err := os.Open(p)
	if err != nil {
		return p, false, false, nil
	}
	n, _ := f.Read(head)
	f.Close()
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(arMagic)) || bytes.HasPrefix(head, []byte(thinMagic)):
		np, changed, err := cc.archive(ctx, s, p)
		return np, changed, false, err
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return p, false, false, nil
	}
	return p, false, true, nil
}

// archive rewrites archive p for side s with each member whose content is that of a
// rebuilt object (or of a replayed relocatable link) replaced.
func (cc *crossCheck) archive(ctx context.Context, s *replaySide, p string) (string, bool, error) {
	key := "archive:" + p
	s.mu.Lock()
	if r, ok := s.done[key]; ok {
		s.mu.Unlock()
		return r.path, r.changed, r.err
	}
	s.seq++
	out := filepath.Join(s.dir, fmt.Sprintf("%d-%s", s.seq, filepath.Base(p)))
	s.mu.Unlock()
	r := func() replayed {
		members, err := readArchiveAs(p, false)
		if err != nil {
			return replayed{path: p, err: err}
		}
		changed := false
		for i, m := range members {
			use := ""
			switch {
			case s.byHash[m.Hash] != "":
				use = s.byHash[m.Hash]
			case m.Path != "" && s.byPath[m.Path] != "":
				use = s.byPath[m.Path]
			case cc.relocByHash[m.Hash] != "":
				rr := cc.replay(ctx, s, cc.relocs[cc.relocByHash[m.Hash]], false)
				if rr.err != nil {
					return replayed{path: p, err: rr.err}
				}
				if rr.changed {
					use = rr.path
				}
			}
			if use == "" {
				if m.Data == nil {
					return replayed{path: p, err: fmt.Errorf("archive %s: member %s: %s is gone", p, m.Name, m.Path)}
				}
				continue
			}
			data, err := os.ReadFile(use)
			if err != nil {
				return replayed{path: p, err: err}
			}
			members[i].Data = data
			changed = true
		}
		if !changed {
			return replayed{path: p}
		}
		if err := writeArchive(out, members); err != nil {
			return replayed{path: p, err: err}
		}
		if o, err := exec.CommandContext(ctx, "ranlib", out).CombinedOutput(); err != nil {
			return replayed{path: p, err: fmt.Errorf("ranlib %s: %w: %s", out, err, o)}
		}
		return replayed{path: out, changed: true}
	}()
	s.mu.Lock()
	s.done[key] = r
	s.mu.Unlock()
	return r.path, r.changed, r.err
}
