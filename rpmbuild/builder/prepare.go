package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// prepare checks every input, unpacks the debuginfo and the source RPM and runs %prep.
func (b *build) prepare(ctx context.Context) (string, error) {
	o := b.opts
	if o.PatchName == "" || o.Source == "" || len(o.Debuginfo) == 0 || len(o.Patches) == 0 {
		return "", fmt.Errorf("%w: --patch-name, --source, --debuginfo and --patch are required", ErrBadInput)
	}
	for _, v := range []string{o.PatchName, o.PatchVersion, o.PatchRelease} {
		if strings.ContainsAny(v, "/ \t\n%") || v == "" || strings.HasPrefix(v, "-") {
			return "", fmt.Errorf("%w: patch name, version and release must be RPM names: %q", ErrBadInput, v)
		}
	}
	if err := CheckTools(); err != nil {
		return "", err
	}
	var err error
	if b.src, err = rpmfile.ReadHeader(o.Source); err != nil {
		return "", fmt.Errorf("%w: source RPM: %w", ErrBadInput, err)
	}
	if len(o.ModuleSources) > 0 {
		return "", fmt.Errorf("%w: several --source: only a kernel patch takes more (its out-of-tree modules' source RPMs)", ErrBadInput)
	}
	if !b.src.Source {
		return "", fmt.Errorf("%w: %s is a binary RPM; --source takes the source RPM (.src.rpm)", ErrBadInput, o.Source)
	}
	for _, p := range o.Patches {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return "", fmt.Errorf("%w: patch file %s: not a readable file", ErrBadInput, p)
		}
	}
	b.index = &debuginfo.Index{}
	for i, path := range o.Debuginfo {
		h, err := rpmfile.ReadHeader(path)
		if err != nil {
			return "", fmt.Errorf("%w: debuginfo RPM: %w", ErrBadInput, err)
		}
		if h.Source || !strings.HasSuffix(h.Name, "-debuginfo") {
			return "", fmt.Errorf("%w: %s (%s) is not a -debuginfo package", ErrBadInput, path, h.Name)
		}
		if h.VR() != b.src.VR() || h.Epoch != b.src.Epoch || h.SourceRPM != b.src.SourceFileName() {
			return "", fmt.Errorf("%w: debuginfo %s-%s was built from %s, not from the source RPM %s",
				ErrBadInput, h.Name, h.VR(), h.SourceRPM, b.src.SourceFileName())
		}
		b.dbg = append(b.dbg, h)
		dir := filepath.Join(b.work, "debuginfo", fmt.Sprint(i))
		if err := rpmfile.Extract(ctx, path, dir, b.logw); err != nil {
			return "", fmt.Errorf("%w: %w", ErrBadInput, err)
		}
		ix, err := debuginfo.Load(dir, strings.TrimSuffix(h.Name, "-debuginfo"))
		if err != nil {
			return "", fmt.Errorf("%w: debuginfo %s: %w", ErrBadInput, path, err)
		}
		b.index.Merge(ix)
	}
	if len(b.index.Targets) == 0 {
		return "", fmt.Errorf("%w: the debuginfo RPMs hold no debug files (/usr/lib/debug/.build-id)", ErrBadInput)
	}
	if !o.SkipCompilerCheck {
		if err := b.checkCompiler(ctx); err != nil {
			return "", err
		}
	}

	b.top = filepath.Join(b.work, "rpmbuild")
	if err := rpmfile.Extract(ctx, o.Source, filepath.Join(b.top, "SOURCES"), b.logw); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	if b.spec, err = b.moveSpec(); err != nil {
		return "", err
	}
	if err := b.command(ctx, b.top, "rpmbuild", b.rpmbuildArgs("-bp")...); err != nil {
		return "", fmt.Errorf("%%prep of %s: %w", b.src.NVR(), err)
	}
	if b.buildDir, err = findBuildDir(filepath.Join(b.top, "BUILD"), b.src); err != nil {
		return "", err
	}
	// Try the patches now, on a hard-linked copy (patch replaces files, it never writes
	// through a link), so a bad patch fails before the long build.
	trial := filepath.Join(b.work, "trial")
	if err := b.command(ctx, b.work, "cp", "-al", b.buildDir, trial); err != nil {
		return "", err
	}
	if err := b.applyPatches(ctx, trial); err != nil {
		return "", err
	}
	os.RemoveAll(trial)
	return fmt.Sprintf("%s, %d ELF files in debuginfo", b.src.NVR(), len(b.index.Targets)), nil
}

func (b *build) moveSpec() (string, error) {
	srcDir := filepath.Join(b.top, "SOURCES")
	specs, _ := filepath.Glob(filepath.Join(srcDir, "*.spec"))
	if len(specs) == 0 {
		return "", fmt.Errorf("%w: the source RPM holds no .spec file", ErrBadInput)
	}
	sort.Strings(specs)
	pick := specs[0]
	for _, s := range specs {
		if filepath.Base(s) == b.src.Name+".spec" {
			pick = s
		}
	}
	if err := os.MkdirAll(filepath.Join(b.top, "SPECS"), 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(b.top, "SPECS", filepath.Base(pick))
	// Keep a copy in SOURCES: the patch's source RPM carries the target's spec too.
	return dst, copyFile(pick, dst)
}

// findBuildDir returns the directory %prep unpacked the sources into.
func findBuildDir(build string, h *rpmfile.Header) (string, error) {
	ents, err := os.ReadDir(build)
	if err != nil {
		return "", fmt.Errorf("%%prep made no BUILD directory: %w", err)
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
			if e.Name() == h.Name+"-"+h.Version {
				return filepath.Join(build, e.Name()), nil
			}
		}
	}
	if len(dirs) == 1 {
		return filepath.Join(build, dirs[0]), nil
	}
	return build, nil
}

// applyPatches applies the .patch files in order to dir (-p1, else -p0).
func (b *build) applyPatches(ctx context.Context, dir string) error {
	return b.applyPatchFiles(ctx, dir, b.opts.Patches)
}

// applyPatchFiles applies patches in order to dir (-p1, else -p0).
func (b *build) applyPatchFiles(ctx context.Context, dir string, patches []string) error {
	for _, p := range patches {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		var out []byte
		ok := false
		for _, strip := range []string{"-p1", "-p0"} {
			args := []string{strip, "--batch", "--forward", "--no-backup-if-mismatch", "-d", dir, "-i", abs}
			out, err = exec.CommandContext(ctx, "patch", append([]string{"--dry-run"}, args...)...).CombinedOutput()
			if err != nil {
				continue
			}
			fmt.Fprintf(b.logw, "+ patch %s\n", strings.Join(args, " "))
			if out, err = exec.CommandContext(ctx, "patch", args...).CombinedOutput(); err != nil {
				break
			}
			b.logw.Write(out)
			ok = true
			break
		}
		if !ok {
			b.logw.Write(out)
			return fmt.Errorf("%w: %s: %s", ErrPatchApply, filepath.Base(p), firstLines(out, 4))
		}
	}
	return nil
}

func firstLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "; ")
}

// checkCompiler compares the GCC version in the debuginfo's DW_AT_producer with the gcc here.
func (b *build) checkCompiler(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "gcc", "-dumpfullversion").Output()
	if err != nil {
		return fmt.Errorf("%w: gcc -dumpfullversion: %w", ErrMissingTool, err)
	}
	here := string(bytes.TrimSpace(out))
	seen := 0
	for _, t := range b.index.Targets {
		prods, err := debuginfo.Producers(t.DebugFile)
		if err != nil {
			return fmt.Errorf("%w: debug file of %s: %w", ErrBadInput, t.Path, err)
		}
		for _, p := range prods {
			v := debuginfo.ProducerVersion(p)
			if v == "" {
				return fmt.Errorf("%w: %s was built by %q, not GCC (--skip-compiler-check to go on)", ErrCompilerMismatch, t.Path, p)
			}
			seen++
			if v != here {
				return fmt.Errorf("%w: %s was built by GCC %s (%q), this machine has gcc %s; install that compiler or pass --skip-compiler-check",
					ErrCompilerMismatch, t.Path, v, p, here)
			}
		}
	}
	if seen == 0 {
		return fmt.Errorf("%w: the debuginfo names no compiler (no DW_AT_producer); pass --skip-compiler-check to go on", ErrCompilerMismatch)
	}
	return nil
}

// targetPackage is the binary package that ships the patched files.
func (b *build) targetPackage(pkg string) patchmeta.Package {
	p := patchmeta.Package{Name: pkg, Epoch: b.src.Epoch, Version: b.src.Version, Release: b.src.Release,
		License: b.src.License}
	for _, h := range b.dbg {
		if strings.TrimSuffix(h.Name, "-debuginfo") == pkg {
			p.Arch = h.Arch
		}
	}
	// A subpackage (foo-libs) has its debug files in the main -debuginfo package: its
	// arch is the one its own binary RPM was built for.
	if a := b.shippedArch[pkg]; p.Arch == "" && a != "" {
		p.Arch = a
	}
	return p
}

var errNoRecords = errors.New("the build compiled nothing through cc/gcc/c++/g++")
