package builder

import (
	"cmp"
	"context"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/runtime/elfsafe"
)

// The %install phase decides what a package ships: it may copy a built file under
// another name (install -m 0755 prog/scm /usr/bin/scmulti), link a program straight into
// the buildroot (gcc -o %{buildroot}/usr/bin/tool), and split the files over several
// binary packages. So the builder runs %install with the compiler captured too (its links
// join the link graph), maps every link output to the installed paths that hold its
// content, and asks rpmbuild's own %files processing which binary package ships each
// path: a fix whose binaries come from two binary packages gets one patch RPM per
// package, each requiring its own exact target.

// installMacros turn off what %install would do after the spec's own script (strip,
// debuginfo extraction, build-id rewriting): the buildroot keeps the linked files as
// they are, so that they can be found by content; and no -debuginfo package is made.
//
// --nocheck: %check runs test suites, which the shipped files do not depend on (and
// which -bc never ran).
var installMacros = []string{
	"--nocheck",
	"--define", "__spec_install_post %{nil}",
	"--define", "debug_package %{nil}",
}

// installShipped runs %install (captured) and then packages the buildroot to learn the
// binary package of each installed file. It fills b.installedAs and b.shipped and
// names each debuginfo target's package.
func (b *build) installShipped(ctx context.Context) error {
	args := append(append([]string{"-bi", "--short-circuit"}, installMacros...), b.rpmbuildArgs()...)
	fmt.Fprintf(b.logw, "+ [capture] rpmbuild %s\n", strings.Join(args, " "))
	cmd := b.cap.Command(ctx, "rpmbuild", args...)
	cmd.Dir = b.top
	cmd.Stdout, cmd.Stderr = b.logw, b.logw
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%%install of %s: %w", b.src.NVR(), err)
	}
	root, err := b.buildRoot()
	if err != nil {
		return err
	}
	recs, err := b.cap.Records()
	if err != nil {
		return err
	}
	b.installedAs, err = installedCopies(recs, root)
	if err != nil {
		return fmt.Errorf("read the buildroot: %w", err)
	}
	// Package the buildroot as it is (no compression, nothing stripped): only the file
	// lists are read.
	rpms := filepath.Join(b.work, "shipped-rpms")
	pargs := append(append([]string{"-bb", "--short-circuit", "--noclean", "--define", "_rpmdir " + rpms,
		"--define", "_binary_payload w0.ufdio"}, installMacros...), b.rpmbuildArgs()...)
	if err := b.command(ctx, b.top, "rpmbuild", pargs...); err != nil {
		return fmt.Errorf("%%files of %s: %w", b.src.NVR(), err)
	}
	b.shipped, b.shippedArch, err = packageFiles(ctx, rpms)
	if err != nil {
		return err
	}
	for i := range b.index.Targets {
		t := &b.index.Targets[i]
		if pkg, ok := b.shipped[t.Path]; ok && pkg != t.Package {
			fmt.Fprintf(b.logw, "%s is shipped by %s (debuginfo %s-debuginfo)\n", t.Path, pkg, t.Package)
			t.Package = pkg
		}
	}
	return nil
}

// buildRoot is the one directory rpmbuild's %install filled under BUILDROOT.
func (b *build) buildRoot() (string, error) {
	ents, err := os.ReadDir(filepath.Join(b.top, "BUILDROOT"))
	if err != nil {
		return "", fmt.Errorf("%%install made no BUILDROOT: %w", err)
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("%%install made %d directories under BUILDROOT (%s), want one", len(dirs), strings.Join(dirs, ", "))
	}
	return filepath.Join(b.top, "BUILDROOT", dirs[0]), nil
}

// installedCopies maps each final link output to the installed paths (relative to
// root, with a leading /) of the files in root that hold the same content: the
// output itself when it was linked into root, or a copy under any name; else of the
// files with the same GNU build-id (a copy stripped by install -s or strip keeps it,
// and nothing rewrote build-ids: installMacros turn debugedit off).
func installedCopies(recs []capture.Record, root string) (map[string][]string, error) {
	byHash, byID := map[string][]string{}, map[string][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || !isELF(p) {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		h := hashFile(p)
		if len(h) != 64 {
			return fmt.Errorf("%s: %s", p, h)
		}
		byHash[h] = append(byHash[h], "/"+rel)
		if id := buildIDOf(p); id != "" {
			byID[id] = append(byID[id], "/"+rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, r := range recs {
		if r.Kind != capture.KindLink || relocatableLink(r) {
			continue
		}
		if !exists(r.Output) {
			continue
		}
		if paths := byHash[hashFile(r.Output)]; len(paths) > 0 { // "missing" or "unreadable" is no key
			out[r.Output] = paths
		} else if id := buildIDOf(r.Output); id != "" && len(byID[id]) > 0 {
			out[r.Output] = byID[id]
		}
	}
	return out, nil
}

// buildIDOf is the GNU build-id of the ELF file p in hex, "" when it has none.
func buildIDOf(p string) string {
	f, err := elfsafe.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	id, err := elfsafe.BuildID(f.File)
	if err != nil || id == nil {
		return ""
	}
	return hex.EncodeToString(id)
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var m [4]byte
	_, err = f.ReadAt(m[:], 0)
	return err == nil && string(m[:]) == elf.ELFMAG
}

// packageFiles reads the file list of every binary RPM under dir with rpm: installed
// path -> binary package name, and package name -> architecture.
func packageFiles(ctx context.Context, dir string) (map[string]string, map[string]string, error) {
	var rpms []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && strings.HasSuffix(p, ".rpm") {
			rpms = append(rpms, p)
		}
		return nil
	})
	if len(rpms) == 0 {
		return nil, nil, fmt.Errorf("%%files of the source package made no binary RPM")
	}
	sort.Strings(rpms)
	m, arch := map[string]string{}, map[string]string{}
	for _, r := range rpms {
		out, err := exec.CommandContext(ctx, "rpm", "-qp", "--nosignature", "--nodigest",
			"--qf", "[%{=NAME}\t%{=ARCH}\t%{FILENAMES}\n]", r).Output()
		if err != nil {
			return nil, nil, fmt.Errorf("rpm -qp %s: %w", filepath.Base(r), err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.SplitN(line, "\t", 3)
			if len(f) == 3 && f[2] != "" {
				m[f[2]] = f[0]
				arch[f[0]] = f[1]
			}
		}
	}
	return m, arch, nil
}

// shippedAs finds the debuginfo target of a file the build linked: among the installed
// paths that hold its content, the one of its own file name first (a package may ship
// the same program under several names, as Redis ships redis-server as redis-sentinel
// and redis-check-aof too: the running server maps the file of its own name), then any
// other; else, when %install shipped no copy found, by its file name alone.
func (b *build) shippedAs(out string) (*debuginfo.Target, error) {
	paths := slices.Clone(b.installedAs[out])
	slices.SortStableFunc(paths, func(x, y string) int {
		return cmp.Compare(btoi(filepath.Base(y) == filepath.Base(out)), btoi(filepath.Base(x) == filepath.Base(out)))
	})
	for _, p := range paths {
		for i := range b.index.Targets {
			if b.index.Targets[i].Path == p {
				return &b.index.Targets[i], nil
			}
		}
	}
	return b.index.Match(out)
}

func btoi(v bool) int {
	if v {
		return 1
	}
	return 0
}
