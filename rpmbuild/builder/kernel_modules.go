package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/syscare/syscare/rpmbuild/kernel"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
)

// outOfTree is an out-of-tree module given as a further --source: its %prep yields the
// module's directory, built against the prepared kernel tree.
type outOfTree struct {
	hdr     *rpmfile.Header
	dir     string   // the module's directory (Makefile or Kbuild with obj-m)
	patches []string // the .patch files that change it
	tus     []*kernel.TU
	// origKo maps a module name to the module built from the original sources, whose
	// symbol table places the fix's references (the shipped module is that build).
	origKo map[string]string
}

// prepareModuleSources unpacks each module source RPM, runs its %prep and finds the
// module directory; then it sends every .patch file to the tree it changes: the module
// whose directory holds all the files it touches, or the kernel.
func (b *build) prepareModuleSources(ctx context.Context) (kernelPatches []string, err error) {
	k := b.kern
	for i, src := range b.opts.ModuleSources {
		h, err := rpmfile.ReadHeader(src)
		if err != nil {
			return nil, fmt.Errorf("%w: module source RPM: %w", ErrBadInput, err)
		}
		if !h.Source || h.IsKernel() {
			return nil, fmt.Errorf("%w: %s is not the source RPM of an out-of-tree module", ErrBadInput, src)
		}
		top := filepath.Join(b.work, fmt.Sprintf("module-src-%d", i))
		if err := rpmfile.Extract(ctx, src, filepath.Join(top, "SOURCES"), b.logw); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		specs, _ := filepath.Glob(filepath.Join(top, "SOURCES", "*.spec"))
		if len(specs) == 0 {
			return nil, fmt.Errorf("%w: %s holds no .spec file", ErrBadInput, src)
		}
		if err := b.command(ctx, top, "rpmbuild", "-bp", "--nodeps", "--define", "_topdir "+top, specs[0]); err != nil {
			return nil, fmt.Errorf("%%prep of %s: %w", h.NVR(), err)
		}
		dir, err := findModuleDir(filepath.Join(top, "BUILD"))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", h.NVR(), err)
		}
		k.external = append(k.external, &outOfTree{hdr: h, dir: dir, origKo: map[string]string{}})
	}
	for _, p := range b.opts.Patches {
		files, err := kernel.TouchedFiles([]string{p})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		var owner *outOfTree
		for _, m := range k.external {
			all := len(files) > 0
			for _, f := range files {
				all = all && isRegular(filepath.Join(m.dir, f))
			}
			if all {
				owner = m
				break
			}
		}
		if owner == nil {
			kernelPatches = append(kernelPatches, p)
			continue
		}
		owner.patches = append(owner.patches, p)
		tus, _, err := kernel.TUs(files)
		if err != nil {
			return nil, err
		}
		for i := range tus {
			tu := tus[i]
			tu.Dir = owner.dir
			owner.tus = append(owner.tus, &tu)
		}
	}
	return kernelPatches, nil
}

// findModuleDir finds the directory with a Makefile or Kbuild naming obj-m, at most
// two levels below dir.
func findModuleDir(dir string) (string, error) {
	isModule := func(d string) bool {
		for _, f := range []string{"Kbuild", "Makefile"} {
			if b, err := os.ReadFile(filepath.Join(d, f)); err == nil && strings.Contains(string(b), "obj-m") {
				return true
			}
		}
		return false
	}
	for _, pat := range []string{"", "*", "*/*"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, d := range m {
			if isModule(d) {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("%%prep left no module directory (a Makefile or Kbuild with obj-m) in %s", dir)
}

// buildExternal builds every out-of-tree module (side "orig" before its fix, "patched"
// after) and copies its changed objects into the side's directory.
func (b *build) buildExternal(ctx context.Context, side string) ([]string, error) {
	k := b.kern
	var names []string
	for _, m := range k.external {
		if len(m.tus) == 0 {
			continue
		}
		if side == "patched" {
			if err := b.applyPatchFiles(ctx, m.dir, m.patches); err != nil {
				return nil, err
			}
		}
		out := filepath.Join(b.work, side, "external", m.hdr.Name)
		kos, err := kernel.BuildExternal(ctx, b.logw, k.tree.Dir, k.release, m.dir, m.tus, out)
		if err != nil {
			return nil, err
		}
		if side == "orig" {
			for _, ko := range kos {
				keep := filepath.Join(b.work, "orig", "external-ko", filepath.Base(ko))
				os.MkdirAll(filepath.Dir(keep), 0o755)
				if err := copyFile(ko, keep); err != nil {
					return nil, err
				}
				m.origKo[strings.ReplaceAll(strings.TrimSuffix(filepath.Base(ko), ".ko"), "-", "_")] = keep
			}
		}
		for _, tu := range m.tus {
			names = append(names, m.hdr.Name+":"+tu.Object)
		}
	}
	return names, nil
}
