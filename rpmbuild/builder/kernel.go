package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/rpmbuild/kernel"
	"github.com/syscare/syscare/rpmbuild/patchrpm"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// kernelBuild is the state of a kernel patch build (the kernel pipeline's part of build).
type kernelBuild struct {
	dbg      *rpmfile.Header
	release  string
	vm       *kernel.Vmlinux
	debugCfg string
	tus      []kernel.TU
	ignored  []string
	tree     *kernel.Tree
	objects  []kernel.PatchObject
	module   *kernel.Module
	// modDebug maps a module's name to its debug file in the unpacked debuginfo.
	modDebug map[string]string
	// external are the out-of-tree modules (further --source), kernelPatches the
	// .patch files that change the kernel tree.
	external      []*outOfTree
	kernelPatches []string
}

// isKernelSource tells whether the --source RPM builds a kernel (read early, to pick
// the pipeline; a bad file is left to prepare to report).
func (b *build) isKernelSource() bool {
	h, err := rpmfile.ReadHeader(b.opts.Source)
	return err == nil && h.Source && h.IsKernel()
}

// kernelSteps is the kernel pipeline: the same steps as for user space, with the
// kernel's rules (no capture build and no cross-check: kbuild's own command builds
// each object, and the module is built against the prepared tree).
func (b *build) kernelSteps() []buildStep {
	b.kern = &kernelBuild{}
	return []buildStep{
		{"prepare", b.kernelPrepare},
		{"build original", b.kernelBuildOriginal},
		{"build patched", b.kernelBuildPatched},
		{"diff", b.kernelDiff},
		{"link", b.kernelLink},
		{"package", b.kernelPack},
	}
}

// kernelTools are the programs the kernel pipeline needs besides the user-space ones.
var kernelTools = [][2]string{{"make", "make"}, {"flex", "flex"}, {"bison", "bison"}, {"bc", "bc"}}

func (b *build) kernelPrepare(ctx context.Context) (string, error) {
	o := b.opts
	k := b.kern
	for _, v := range []string{o.PatchName, o.PatchVersion, o.PatchRelease} {
		if strings.ContainsAny(v, "/ \t\n%") || v == "" || strings.HasPrefix(v, "-") {
			return "", fmt.Errorf("%w: patch name, version and release must be RPM names: %q", ErrBadInput, v)
		}
	}
	if err := CheckTools(); err != nil {
		return "", err
	}
	for _, t := range kernelTools {
		if _, err := exec.LookPath(t[0]); err != nil {
			return "", fmt.Errorf("%w: %s is not on PATH (install %s; kernel builds need it)", ErrMissingTool, t[0], t[1])
		}
	}
	var err error
	if b.src, err = rpmfile.ReadHeader(o.Source); err != nil {
		return "", fmt.Errorf("%w: source RPM: %w", ErrBadInput, err)
	}
	for _, p := range o.Patches {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return "", fmt.Errorf("%w: patch file %s: not a readable file", ErrBadInput, p)
		}
	}
	if len(o.Debuginfo) != 1 {
		return "", fmt.Errorf("%w: a kernel patch takes one --debuginfo, the kernel-debuginfo RPM (%d given)", ErrBadInput, len(o.Debuginfo))
	}
	h, err := rpmfile.ReadHeader(o.Debuginfo[0])
	if err != nil {
		return "", fmt.Errorf("%w: debuginfo RPM: %w", ErrBadInput, err)
	}
	if h.Source || !strings.HasSuffix(h.Name, "-debuginfo") {
		return "", fmt.Errorf("%w: %s (%s) is not a -debuginfo package", ErrBadInput, o.Debuginfo[0], h.Name)
	}
	if h.VR() != b.src.VR() || h.Epoch != b.src.Epoch || h.SourceRPM != b.src.SourceFileName() {
		return "", fmt.Errorf("%w: debuginfo %s-%s is for another kernel build (from %s), not for the source RPM %s",
			ErrBadInput, h.Name, h.VR(), h.SourceRPM, b.src.SourceFileName())
	}
	k.dbg = h
	b.dbg = []*rpmfile.Header{h}
	// What the fix touches is known from the .patch files alone: refuse early (with
	// out-of-tree modules, once their sources are unpacked).
	files, err := kernel.TouchedFiles(o.Patches)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	k.kernelPatches = o.Patches
	if len(o.ModuleSources) == 0 {
		if k.tus, k.ignored, err = kernel.TUs(files); err != nil {
			return "", kernelTUError(err)
		}
	}
	dir := filepath.Join(b.work, "debuginfo")
	if err := rpmfile.Extract(ctx, o.Debuginfo[0], dir, b.logw); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	vmlinuxes, _ := filepath.Glob(filepath.Join(dir, "usr/lib/debug/lib/modules/*/vmlinux"))
	if len(vmlinuxes) != 1 {
		return "", fmt.Errorf("%w: %s holds %d /usr/lib/debug/lib/modules/<release>/vmlinux files, want one", ErrBadInput, filepath.Base(o.Debuginfo[0]), len(vmlinuxes))
	}
	k.release = filepath.Base(filepath.Dir(vmlinuxes[0]))
	if k.vm, err = kernel.ReadVmlinux(vmlinuxes[0]); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	if k.vm.Release() != k.release {
		return "", fmt.Errorf("%w: the vmlinux under modules/%s says it is release %q (vermagic %q)", ErrBadInput, k.release, k.vm.Release(), k.vm.Vermagic)
	}
	k.modDebug = map[string]string{}
	filepath.WalkDir(filepath.Join(dir, "usr/lib/debug/lib/modules", k.release), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			base := strings.TrimSuffix(d.Name(), ".debug")
			if strings.HasSuffix(base, ".ko") {
				k.modDebug[strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")] = p
			}
		}
		return nil
	})
	for _, c := range []string{"usr/lib/debug/lib/modules/" + k.release + "/config", "lib/modules/" + k.release + "/config",
		"boot/config-" + k.release, "usr/lib/debug/boot/config-" + k.release} {
		if p := filepath.Join(dir, c); isRegular(p) {
			k.debugCfg = p
			break
		}
	}
	if o.KernelConfig != "" && !isRegular(o.KernelConfig) {
		return "", fmt.Errorf("%w: --kernel-config %s: not a readable file", ErrBadInput, o.KernelConfig)
	}
	k.tree, err = kernel.PrepareTree(ctx, kernel.TreeOptions{SRPM: o.Source, Release: k.release, Config: o.KernelConfig,
		DebugConfig: k.debugCfg, Cache: o.KernelCache, Work: b.work, Jobs: o.Jobs, Log: b.logw, Prep: b.kernelPrep})
	if err != nil {
		if errors.Is(err, kernel.ErrConfig) {
			return "", fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		return "", err
	}
	if err := kernel.WriteTreeSymvers(k.tree.Dir, k.vm); err != nil {
		return "", err
	}
	if len(o.ModuleSources) > 0 {
		if k.kernelPatches, err = b.prepareModuleSources(ctx); err != nil {
			return "", err
		}
		if len(k.kernelPatches) > 0 {
			kf, err := kernel.TouchedFiles(k.kernelPatches)
			if err != nil {
				return "", fmt.Errorf("%w: %w", ErrBadInput, err)
			}
			if k.tus, k.ignored, err = kernel.TUs(kf); err != nil {
				return "", kernelTUError(err)
			}
		}
	}
	// The fix must apply: tried now on copies of the files it touches, before any compile.
	if err := b.trialApply(ctx, "trial", k.tree.Dir, k.kernelPatches); err != nil {
		return "", err
	}
	for i, m := range k.external {
		if err := b.trialApply(ctx, fmt.Sprintf("trial-%d", i), m.dir, m.patches); err != nil {
			return "", err
		}
	}
	how := "prepared"
	if k.tree.Cached {
		how = "cached"
	}
	return fmt.Sprintf("%s for %s, tree %s, config from %s", b.src.NVR(), k.release, how, k.tree.ConfigFrom), nil
}

// kernelTUError classifies an error of kernel.TUs: assembly is a refusal (exit 4).
func kernelTUError(err error) error {
	if errors.Is(err, kernel.ErrAssembly) {
		return refusal{err}
	}
	return err
}

// trialApply applies patches to copies of the files they touch in dir.
func (b *build) trialApply(ctx context.Context, name, dir string, patches []string) error {
	if len(patches) == 0 {
		return nil
	}
	files, err := kernel.TouchedFiles(patches)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	trial := filepath.Join(b.work, name)
	os.MkdirAll(trial, 0o755)
	for _, f := range files {
		if src := filepath.Join(dir, f); isRegular(src) {
			os.MkdirAll(filepath.Dir(filepath.Join(trial, f)), 0o755)
			if err := copyFile(src, filepath.Join(trial, f)); err != nil {
				return err
			}
		}
	}
	if err := b.applyPatchFiles(ctx, trial, patches); err != nil {
		return err
	}
	return os.RemoveAll(trial)
}

// kernelPrep unpacks the source RPM into top and runs its %prep.
func (b *build) kernelPrep(ctx context.Context, top string) (string, error) {
	b.top = top
	if err := rpmfile.Extract(ctx, b.opts.Source, filepath.Join(top, "SOURCES"), b.logw); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	var err error
	if b.spec, err = b.moveSpec(); err != nil {
		return "", err
	}
	if err := b.command(ctx, top, "rpmbuild", b.rpmbuildArgs("-bp")...); err != nil {
		return "", fmt.Errorf("%%prep of %s: %w", b.src.NVR(), err)
	}
	// top goes once the tree is ready (into the cache, or removed), but the patch's
	// source RPM takes the spec at the end: keep it in the build's own directory.
	keep := filepath.Join(b.work, "kernel-spec", filepath.Base(b.spec))
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		return "", err
	}
	if err := copyFile(b.spec, keep); err != nil {
		return "", fmt.Errorf("keep the spec of %s: %w", b.src.NVR(), err)
	}
	b.spec = keep
	return filepath.Join(top, "BUILD"), nil
}

func (b *build) kernelCompile(ctx context.Context, side string) (string, error) {
	k := b.kern
	var names []string
	for i := range k.tus {
		out := filepath.Join(b.work, side, k.tus[i].Object)
		name := k.tus[i].Object
		if side == "orig" {
			cached, err := k.tree.CompileOriginal(ctx, b.logw, &k.tus[i], out)
			if err != nil {
				return "", err
			}
			if cached {
				name += " cached"
			}
		} else if err := kernel.Compile(ctx, b.logw, k.tree.Dir, k.release, &k.tus[i], out); err != nil {
			return "", err
		}
		names = append(names, name)
	}
	ext, err := b.buildExternal(ctx, side)
	if err != nil {
		return "", err
	}
	names = append(names, ext...)
	b.res.Rebuilt, b.res.Total = len(names), len(names)
	return strings.Join(names, " "), nil
}

func (b *build) kernelBuildOriginal(ctx context.Context) (string, error) {
	return b.kernelCompile(ctx, "orig")
}

func (b *build) kernelBuildPatched(ctx context.Context) (string, error) {
	if err := b.applyPatchFiles(ctx, b.kern.tree.Dir, b.kern.kernelPatches); err != nil {
		return "", err
	}
	return b.kernelCompile(ctx, "patched")
}

func (b *build) kernelDiff(ctx context.Context) (string, error) {
	k := b.kern
	var parts []*diff.Report
	var changed []string
	type unit struct {
		tu            kernel.TU
		orig, patched string
		ko            string // the out-of-tree module built from the original sources
	}
	var units []unit
	for _, tu := range k.tus {
		units = append(units, unit{tu: tu, orig: filepath.Join(b.work, "orig", tu.Object), patched: filepath.Join(b.work, "patched", tu.Object)})
	}
	for _, m := range k.external {
		for _, tu := range m.tus {
			sub := filepath.Join("external", m.hdr.Name, tu.Object)
			u := unit{tu: *tu, orig: filepath.Join(b.work, "orig", sub), patched: filepath.Join(b.work, "patched", sub), ko: m.origKo[tu.Module]}
			if u.ko == "" {
				return "", fmt.Errorf("%s of %s: the module %s was not built", tu.Source, m.hdr.NVR(), tu.Module)
			}
			units = append(units, u)
		}
	}
	for _, un := range units {
		tu, orig, patched := un.tu, un.orig, un.patched
		var loc diff.Locator = k.vm
		var target *kernel.ModuleSyms
		if un.ko != "" {
			ms, err := kernel.ReadModule(un.ko)
			if err != nil {
				return "", err
			}
			loc, target = ms, ms
		} else if tu.Module != "" {
			p, ok := k.modDebug[tu.Module]
			if !ok {
				return "", fmt.Errorf("%w: %s is built into the module %s, and the debuginfo RPM has no debug file of it (lib/modules/%s/.../%s.ko)",
					ErrBadInput, tu.Source, tu.Module, k.release, tu.Module)
			}
			ms, err := kernel.ReadModule(p)
			if err != nil {
				return "", fmt.Errorf("%w: %w", ErrBadInput, err)
			}
			loc, target = ms, ms
		}
		r, obj, err := kernel.Diff(ctx, b.logw, tu, orig, patched, filepath.Join(b.work, "diff", filepath.Base(tu.Dir), tu.Object), loc)
		if r != nil {
			fmt.Fprintf(b.logw, "%s", r.String())
		}
		var u *diff.UnpatchableError
		switch {
		case errors.Is(err, diff.ErrNoChange):
			parts = append(parts, &diff.Report{Schema: diff.ReportSchema, Files: []string{tu.Source}, NoChange: []string{tu.Source}})
			continue
		case errors.As(err, &u):
			parts = append(parts, diff.ReportError(tu.Source, err))
			b.res.Reports = []*diff.Report{diff.MergeReports("vmlinux", parts...)}
			return "", fmt.Errorf("%s: %w", tu.Source, err)
		case err != nil:
			return "", fmt.Errorf("diff %s: %w", tu.Source, err)
		}
		parts = append(parts, withFile(r.Report(), tu.Source))
		k.objects = append(k.objects, kernel.PatchObject{TU: tu, Object: obj, Target: target})
		changed = append(changed, r.Changed()...)
	}
	rp := diff.MergeReports("vmlinux", parts...)
	for _, f := range k.ignored {
		rp.Notes = append(rp.Notes, f+": not code, left out")
	}
	b.res.Reports = []*diff.Report{rp}
	var all []kernel.TU
	for _, u := range units {
		all = append(all, u.tu)
	}
	b.res.Reports[0].Target = reportTarget(all)
	if len(k.objects) == 0 {
		return "", fmt.Errorf("%w: the fix changes no kernel function", diff.ErrNoChange)
	}
	sort.Strings(changed)
	return "changed: " + strings.Join(changed, " "), nil
}

func (b *build) kernelLink(ctx context.Context) (string, error) {
	k := b.kern
	m, err := kernel.BuildModule(ctx, kernel.ModuleInput{Name: kernelModuleName(b.opts.PatchName, b.opts.PatchVersion, b.opts.PatchRelease),
		Objects: k.objects, Vmlinux: k.vm, Tree: k.tree.Dir, Release: k.release, Dir: filepath.Join(b.work, "module"), Log: b.logw})
	if err != nil {
		return "", err
	}
	k.module = m
	return fmt.Sprintf("%s, %d bytes, %d livepatch relocations", filepath.Base(m.Path), m.Size, m.KlpRelocations), nil
}

// kernelModuleName makes the module's name from the patch's: letters, digits and
// underscores, at most 55 characters (the kernel's limit).
func kernelModuleName(name, version, release string) string {
	s := "syscare_" + name + "_" + version + "_" + release
	out := []byte(strings.ToLower(s))
	for i, c := range out {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			out[i] = '_'
		}
	}
	if len(out) > 55 {
		out = out[:55]
	}
	return string(out)
}

func (b *build) kernelPack(ctx context.Context) (string, error) {
	k := b.kern
	target := patchmeta.Package{Name: b.src.Name, Epoch: b.src.Epoch, Version: b.src.Version, Release: b.src.Release,
		Arch: k.dbg.Arch, License: b.src.License}
	// A fix of an out-of-tree module alone requires that module's package.
	var ext *rpmfile.Header
	for _, m := range k.external {
		if len(m.tus) > 0 {
			ext = m.hdr
		}
	}
	if ext != nil && len(k.tus) == 0 {
		target = patchmeta.Package{Name: ext.Name, Epoch: ext.Epoch, Version: ext.Version, Release: ext.Release,
			Arch: k.dbg.Arch, License: ext.License}
	}
	p := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: newUUID(), Name: b.opts.PatchName,
		Version: b.opts.PatchVersion, Release: b.opts.PatchRelease, Kind: patchmeta.KindKernel,
		Target: target, Arch: target.Arch, Description: b.opts.Description}
	for _, f := range b.opts.Patches {
		sum, err := patchmeta.FileSHA256(f)
		if err != nil {
			return "", err
		}
		p.Sources = append(p.Sources, patchmeta.Source{File: filepath.Base(f), SHA256: sum})
	}
	var payload []string
	rf := filepath.Join(b.work, "out", ReportFile)
	if err := os.MkdirAll(filepath.Dir(rf), 0o755); err != nil {
		return "", err
	}
	if err := WriteReportFile(rf, b.res.Reports); err != nil {
		return "", err
	}
	payload = append(payload, rf)
	p.Report = ReportFile
	sum, err := patchmeta.FileSHA256(k.module.Path)
	if err != nil {
		return "", err
	}
	p.Entities = append(p.Entities, patchmeta.Entity{UUID: newUUID(), File: filepath.Base(k.module.Path),
		TargetPath: "/boot/vmlinuz-" + k.release, BuildID: k.vm.BuildID, SHA256: sum, Functions: k.module.Funcs})
	payload = append(payload, k.module.Path)
	// The patch's source RPM carries the kernel's spec and the fix; the kernel's own
	// sources stay in the kernel source RPM it names.
	if b.spec == "" {
		// The tree came from the cache: take the spec alone out of the source RPM.
		dir := filepath.Join(b.work, "kernel-spec")
		os.MkdirAll(dir, 0o755)
		cmd := fmt.Sprintf("rpm2cpio %q | cpio -idm --quiet --no-absolute-filenames '*.spec'", b.opts.Source)
		if err := b.command(ctx, dir, "sh", "-c", cmd); err != nil {
			return "", fmt.Errorf("spec of %s: %w", b.src.NVR(), err)
		}
		specs, _ := filepath.Glob(filepath.Join(dir, "*.spec"))
		if len(specs) == 0 {
			return "", fmt.Errorf("%w: the source RPM holds no .spec file", ErrBadInput)
		}
		b.spec = specs[0]
	}
	sources := append([]string{b.spec}, b.opts.Patches...)
	out, err := patchrpm.Build(ctx, filepath.Join(b.work, "patchrpm"), patchrpm.Input{Patch: p, Payload: payload, Sources: sources}, b.logw)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(b.opts.OutputDir, 0o755); err != nil {
		return "", err
	}
	b.res.RPM = filepath.Join(b.opts.OutputDir, filepath.Base(out.RPM))
	b.res.SRPM = filepath.Join(b.opts.OutputDir, filepath.Base(out.SRPM))
	if err := copyFile(out.RPM, b.res.RPM); err != nil {
		return "", err
	}
	if err := copyFile(out.SRPM, b.res.SRPM); err != nil {
		return "", err
	}
	b.res.Patch = p
	b.res.ModuleSize = k.module.Size
	return filepath.Base(b.res.RPM), nil
}

// reportTarget names what the patch changes: vmlinux and/or the modules.
func reportTarget(tus []kernel.TU) string {
	seen := map[string]bool{}
	var names []string
	for _, tu := range tus {
		n := tu.Module
		if n == "" {
			n = "vmlinux"
		}
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

func isRegular(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// refusal marks a kernel rule's refusal (assembly) as a *diff.UnpatchableError
// (exit 4) while keeping its own message, which names the file.
type refusal struct{ err error }

func (r refusal) Error() string { return r.err.Error() }
func (r refusal) Unwrap() error { return r.err }

// As lets errors.As find the refusal as the differ's refusal type.
func (r refusal) As(target any) bool {
	if p, ok := target.(**diff.UnpatchableError); ok {
		*p = &diff.UnpatchableError{Reason: r.err.Error()}
		return true
	}
	return false
}
