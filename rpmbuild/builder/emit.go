package builder

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/rpmbuild/patchrpm"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/runtime/patchobj"
)

// ObjectDiff is the differ's answer for one object.
type ObjectDiff struct {
	// Fragment is the ET_REL patch object fragment (without .upatch.build_id).
	Fragment []byte
	// Classification is the differ's text dump (SAME/CHANGED/NEW), for the log.
	Classification string
	// Report is the object's part of the patch report.
	Report *diff.Report
	// Changed and New name the replaced and the added functions.
	Changed, New []string
}

// diffResult diffs one original object against its rebuild, resolving the target's
// symbols through loc. It returns diff.ErrNoChange for no functional change and the
// differ's *diff.UnpatchableError for a change that cannot be hot patched. emitObject
// writes its patch fragment once the builder settled which object carries each
// changed vague-linkage function.
func diffResult(orig, patched string, loc *debuginfo.Locator, aliasPrefix string) (*diff.Result, error) {
	o, err := os.ReadFile(orig)
	if err != nil {
		return nil, err
	}
	p, err := os.ReadFile(patched)
	if err != nil {
		return nil, err
	}
	return diff.Diff(bytes.NewReader(o), bytes.NewReader(p), diff.Options{Locator: loc, Resolver: loc, AliasPrefix: aliasPrefix})
}

func emitObject(r *diff.Result) (*ObjectDiff, error) {
	frag, err := r.Object()
	if err != nil {
		return nil, fmt.Errorf("emit patch object: %w", err)
	}
	return &ObjectDiff{Fragment: frag, Classification: r.String(), Report: r.Report(), Changed: r.Changed(), New: r.New()}, nil
}

// targetPatch collects the patch of one shipped ELF.
type targetPatch struct {
	target  *debuginfo.Target
	loc     *debuginfo.Locator
	frags   []string
	changed []string
	parts   []*diff.Report
	report  *diff.Report
	new     []string
	object  string
	file    string
	funcs   []patchmeta.Function
}

// patchOf returns the patch collected for target t, or nil.
func (b *build) patchOf(t *debuginfo.Target) *targetPatch {
	for _, tp := range b.targets {
		if tp.target == t {
			return tp
		}
	}
	return nil
}

func (b *build) targetFor(t *debuginfo.Target) (*targetPatch, error) {
	for _, tp := range b.targets {
		if tp.target == t {
			return tp, nil
		}
	}
	loc, err := debuginfo.NewLocator(t.DebugFile)
	if err != nil {
		return nil, fmt.Errorf("%w: symbols of %s: %w", ErrBadInput, t.Path, err)
	}
	tp := &targetPatch{target: t, loc: loc}
	b.targets = append(b.targets, tp)
	return tp, nil
}

// diff runs the differ on each rebuilt object, once per shipped ELF it is part of, and
// makes the patch report of each ELF. A refusal does not stop it: every object is
// diffed, so that the report is complete, and the first refusal is the error.
func (b *build) diff(ctx context.Context) (string, error) {
	recs, err := b.cap.Records()
	if err != nil {
		return "", err
	}
	g := newLinkGraph(recs, contents(recs, b.originals()))
	n, fns := 0, 0
	dir := filepath.Join(b.work, "frags")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var notes []string
	var refusal error
	var results []*objectResult
	for _, t := range b.tus {
		if t.patched == "" {
			continue
		}
		if err := ctx.Err(); err != nil {
			return "", err
		}
		file := relTo(b.buildDir, t.rec.Source)
		finals := g.Finals(t.rec.Object)
		if len(finals) == 0 {
			notes = append(notes, fmt.Sprintf("%s: linked into no executable or library; ignored", file))
			continue
		}
		var unshipped []string
		diffed := false
		for _, out := range finals {
			tg, err := b.shippedAs(out)
			if errors.Is(err, debuginfo.ErrNotFound) {
				unshipped = append(unshipped, relTo(b.buildDir, out))
				continue
			}
			if err != nil {
				return "", err
			}
			diffed = true
			tp, err := b.targetFor(tg)
			if err != nil {
				return "", err
			}
			n++
			fmt.Fprintf(b.logw, "==> diff %s (%s) for %s\n", file, filepath.Base(t.rec.Object), tg.Path)
			r, err := diffResult(t.orig, t.patched, tp.loc, fmt.Sprintf("__upatch_%d_", t.idx))
			if err != nil {
				part := diff.ReportError(file, err)
				if part == nil {
					return "", fmt.Errorf("%s (%s): %w", file, tg.Path, err)
				}
				tp.parts = append(tp.parts, part)
				if errors.Is(err, diff.ErrNoChange) {
					fmt.Fprintf(b.logw, "no functional change\n")
					continue
				}
				fmt.Fprintf(b.logw, "refused: %v\n", err)
				if refusal == nil {
					refusal = fmt.Errorf("%s (%s): %w", file, tg.Path, err)
				}
				continue
			}
			results = append(results, &objectResult{t: t, tp: tp, out: out, file: file, r: r})
		}
		if !diffed {
			// Tests and test modules: built and linked, but into nothing the package ships.
			notes = append(notes, fmt.Sprintf("%s: goes into no shipped binary (only into %s); ignored", file, strings.Join(unshipped, ", ")))
		} else if len(unshipped) > 0 {
			fmt.Fprintf(b.logw, "%s: also linked into %s, which is not shipped\n", file, strings.Join(unshipped, ", "))
		}
	}
	// Changed vague-linkage functions: one object carries each, or the build is refused.
	if refusal == nil {
		vnotes, err := b.settleVague(g, results)
		var ue *diff.UnpatchableError
		if err != nil && !errors.As(err, &ue) {
			return "", err
		}
		refusal = err
		notes = append(notes, vnotes...)
	}
	if refusal != nil {
		// The report still lists what the other objects would have replaced.
		for _, od := range results {
			od.tp.parts = append(od.tp.parts, withFile(od.r.Report(), od.file))
		}
	} else {
		for _, od := range results {
			t, tp := od.t, od.tp
			d, err := emitObject(od.r)
			if err != nil {
				return "", fmt.Errorf("%s (%s): %w", od.file, tp.target.Path, err)
			}
			fmt.Fprintln(b.logw, d.Classification)
			if d.Report != nil {
				tp.parts = append(tp.parts, withFile(d.Report, od.file))
			}
			if od.dropped && len(d.Changed) == 0 && len(d.New) == 0 {
				continue // its only changes are carried by another object's fragment
			}
			frag := filepath.Join(dir, fmt.Sprintf("%d-%d.o", len(tp.frags), t.idx))
			if err := os.WriteFile(frag, d.Fragment, 0o644); err != nil {
				return "", err
			}
			tp.frags = append(tp.frags, frag)
			tp.changed = append(tp.changed, d.Changed...)
			tp.new = append(tp.new, d.New...)
			fns += len(d.Changed)
		}
	}
	for _, note := range notes {
		fmt.Fprintf(b.logw, "note: %s\n", note)
	}
	b.notes = notes
	for _, tp := range b.targets {
		tp.report = diff.MergeReports(tp.target.Path, tp.parts...)
		tp.report.Notes = append(tp.report.Notes, notes...)
		b.res.Reports = append(b.res.Reports, tp.report)
	}
	if refusal != nil {
		return "", refusal
	}
	// The verdict waits for the cross-check.
	return fmt.Sprintf("%d objects, %d changed functions", n, fns), nil
}

// verdict keeps the targets that need a function replaced. A target whose objects only
// add functions (a changed object it shares with another binary, whose new function
// only the other one calls) needs nothing: it gets no patch object, and the report says
// so. No target left is "no functional change", unless a shipped binary could not be
// cross-checked: then nobody knows, and that is an error of its own.
func (b *build) verdict(unchecked []string) error {
	var kept []*targetPatch
	for _, tp := range b.targets {
		if len(tp.changed) > 0 {
			kept = append(kept, tp)
		}
	}
	if len(kept) == 0 {
		if len(unchecked) > 0 {
			return fmt.Errorf("the differ found no function to replace, but shipped binaries could not be cross-checked (%s)", strings.Join(unchecked, "; "))
		}
		if len(b.notes) > 0 {
			return fmt.Errorf("%w: the rebuilt objects differ in no function of a shipped ELF (%s)", diff.ErrNoChange, strings.Join(b.notes, "; "))
		}
		return fmt.Errorf("%w: the rebuilt objects differ in no function of a shipped ELF", diff.ErrNoChange)
	}
	b.targets = kept
	b.res.Reports = nil
	for _, tp := range kept {
		for _, st := range b.res.Binaries {
			tp.report.Notes = append(tp.report.Notes, "shipped "+st.Line())
		}
		b.res.Reports = append(b.res.Reports, tp.report)
	}
	return nil
}

// withFile names the translation unit as the build directory sees it (the differ
// names it as DWARF does), so that every part of a report agrees.
func withFile(rp *diff.Report, file string) *diff.Report {
	c := *rp
	c.Files = []string{file}
	c.Changed = append([]diff.FuncChange(nil), rp.Changed...)
	for i := range c.Changed {
		c.Changed[i].File = file
	}
	return &c
}

func relTo(base, p string) string {
	if r, err := filepath.Rel(base, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

// link merges the fragments of each target into one patch object and records the
// target's build-id in it.
func (b *build) link(ctx context.Context) (string, error) {
	dir := filepath.Join(b.work, "out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	used := map[string]bool{}
	var names []string
	for _, tp := range b.targets {
		name := filepath.Base(tp.target.Path) + ".upatch"
		for i := 2; used[name]; i++ {
			name = fmt.Sprintf("%s-%d.upatch", filepath.Base(tp.target.Path), i)
		}
		used[name] = true
		tp.file = name
		tp.object = filepath.Join(dir, name)
		merged := tp.object + ".ld"
		if err := b.command(ctx, dir, "ld", append([]string{"-r", "-o", merged}, tp.frags...)...); err != nil {
			return "", fmt.Errorf("link the patch of %s: %w", tp.target.Path, err)
		}
		idFile := tp.object + ".build-id"
		if err := os.WriteFile(idFile, append([]byte(tp.target.BuildID), 0), 0o644); err != nil {
			return "", err
		}
		if err := b.command(ctx, dir, "objcopy", "--add-section", patchobj.BuildIDSection+"="+idFile,
			"--set-section-flags", patchobj.BuildIDSection+"=readonly,contents", merged, tp.object); err != nil {
			return "", fmt.Errorf("add the build-id to the patch of %s: %w", tp.target.Path, err)
		}
		data, err := os.ReadFile(tp.object)
		if err != nil {
			return "", err
		}
		obj, err := patchobj.ParseBytes(data)
		if err != nil {
			return "", fmt.Errorf("the linked patch of %s: %w", tp.target.Path, err)
		}
		if fmt.Sprintf("%x", obj.TargetBuildID) != tp.target.BuildID && string(obj.TargetBuildID) != tp.target.BuildID {
			return "", fmt.Errorf("the linked patch of %s carries build-id %q", tp.target.Path, obj.TargetBuildID)
		}
		// Production hosts have no debuginfo: the patch must carry its target's offsets.
		if !obj.SelfContained() {
			return "", fmt.Errorf("the linked patch of %s carries no %s: it would need the target's debuginfo on the host", tp.target.Path, patchobj.OffsetsSection)
		}
		for _, f := range obj.Funcs {
			tp.funcs = append(tp.funcs, patchmeta.Function{Name: f.OldName, Pos: f.OldPos})
		}
		if len(tp.funcs) == 0 {
			return "", fmt.Errorf("%w: the patch of %s replaces no function", diff.ErrNoChange, tp.target.Path)
		}
		names = append(names, fmt.Sprintf("%s: %d functions", filepath.Base(tp.target.Path), len(tp.funcs)))
	}
	return strings.Join(names, ", "), nil
}

// pack writes one patch per binary package that ships a patched ELF: its patch.json,
// binary and source RPMs, into the output directory. Each patch RPM requires its own
// exact target package, which is how repositories, dnf hotpatch and the helper know a
// patch's target (one target package per patch RPM); the patches of one fix share the
// patch name, version and release, and dnf hotpatch upgrade installs and applies them
// in one transaction.
func (b *build) pack(ctx context.Context) (string, error) {
	byPkg := map[string][]*targetPatch{}
	var pkgs []string
	for _, tp := range b.targets {
		if byPkg[tp.target.Package] == nil {
			pkgs = append(pkgs, tp.target.Package)
		}
		byPkg[tp.target.Package] = append(byPkg[tp.target.Package], tp)
	}
	sort.Strings(pkgs)
	if len(pkgs) == 0 {
		return "", fmt.Errorf("%w: no patched binary to package", diff.ErrNoChange)
	}
	if err := os.MkdirAll(b.opts.OutputDir, 0o755); err != nil {
		return "", err
	}
	var names []string
	for _, pkg := range pkgs {
		p, rpm, srpm, err := b.packOne(ctx, pkg, byPkg[pkg])
		if err != nil {
			return "", fmt.Errorf("patch of %s: %w", pkg, err)
		}
		b.res.Patches = append(b.res.Patches, p)
		b.res.RPMs = append(b.res.RPMs, rpm)
		b.res.SRPMs = append(b.res.SRPMs, srpm)
		names = append(names, filepath.Base(rpm))
	}
	b.res.Patch, b.res.RPM, b.res.SRPM = b.res.Patches[0], b.res.RPMs[0], b.res.SRPMs[0]
	return strings.Join(names, ", "), nil
}

// packOne writes the patch of the binary package pkg, whose patched ELFs are tps.
func (b *build) packOne(ctx context.Context, pkg string, tps []*targetPatch) (*patchmeta.Patch, string, string, error) {
	p := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: newUUID(), Name: b.opts.PatchName,
		Version: b.opts.PatchVersion, Release: b.opts.PatchRelease, Kind: patchmeta.KindUser,
		Target: b.targetPackage(pkg), Description: b.opts.Description}
	p.Arch = p.Target.Arch
	if p.Arch == "" {
		return nil, "", "", fmt.Errorf("no architecture known for %s (no debuginfo package names it)", pkg)
	}
	for _, f := range b.opts.Patches {
		sum, err := patchmeta.FileSHA256(f)
		if err != nil {
			return nil, "", "", err
		}
		p.Sources = append(p.Sources, patchmeta.Source{File: filepath.Base(f), SHA256: sum})
	}
	dir := filepath.Join(b.work, "out", pkg)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", "", err
	}
	var reportPart []*diff.Report
	var files []string
	for _, tp := range tps {
		if tp.report != nil {
			reportPart = append(reportPart, tp.report)
		}
	}
	if len(reportPart) > 0 {
		rf := filepath.Join(dir, ReportFile)
		if err := WriteReportFile(rf, reportPart); err != nil {
			return nil, "", "", err
		}
		files = append(files, rf)
		p.Report = ReportFile
	}
	for _, tp := range tps {
		sum, err := patchmeta.FileSHA256(tp.object)
		if err != nil {
			return nil, "", "", err
		}
		p.Entities = append(p.Entities, patchmeta.Entity{UUID: newUUID(), File: tp.file, TargetPath: tp.target.Path,
			BuildID: tp.target.BuildID, SHA256: sum, Functions: tp.funcs})
		files = append(files, tp.object)
	}
	// The source RPM carries what is needed to build the next, cumulative patch: the
	// target's sources and spec, and the .patch files.
	var sources []string
	ents, err := os.ReadDir(filepath.Join(b.top, "SOURCES"))
	if err != nil {
		return nil, "", "", err
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			sources = append(sources, filepath.Join(b.top, "SOURCES", e.Name()))
		}
	}
	sort.Strings(sources)
	sources = append(sources, b.opts.Patches...)
	out, err := patchrpm.Build(ctx, filepath.Join(b.work, "patchrpm", pkg), patchrpm.Input{Patch: p, Payload: files, Sources: sources}, b.logw)
	if err != nil {
		return nil, "", "", err
	}
	rpm := filepath.Join(b.opts.OutputDir, filepath.Base(out.RPM))
	srpm := filepath.Join(b.opts.OutputDir, filepath.Base(out.SRPM))
	if err := copyFile(out.RPM, rpm); err != nil {
		return nil, "", "", err
	}
	if err := copyFile(out.SRPM, srpm); err != nil {
		return nil, "", "", err
	}
	return p, rpm, srpm, nil
}

func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// ReportFile is the name of the patch report in the patch directory (patch.json's
// "report"): a JSON array with the report of each patched ELF, each element
// diff.Report's JSON form plus "summary", its Summary line, so that a reader needs
// nothing of the differ to show it.
const ReportFile = "report.json"

// WriteReportFile writes reports in the ReportFile format to path.
func WriteReportFile(path string, reports []*diff.Report) error {
	var all []json.RawMessage
	for _, rp := range reports {
		js, err := rp.JSON()
		if err != nil {
			return fmt.Errorf("patch report: %w", err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(js, &m); err != nil {
			return fmt.Errorf("patch report: %w", err)
		}
		m["summary"], _ = json.Marshal(rp.Summary())
		one, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("patch report: %w", err)
		}
		all = append(all, one)
	}
	out, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return fmt.Errorf("patch report: %w", err)
	}
	return os.WriteFile(path, append(out, '\n'), 0o644)
}
