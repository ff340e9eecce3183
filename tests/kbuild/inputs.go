// Package kbuild tests kernel hot patch builds end to end: it makes, from Debian's
// packages of the kernel tests/kernel boots, the RPMs a kernel packager would ship (a
// kernel source RPM whose %prep yields the tree with its config, and a kernel-debuginfo
// RPM holding /usr/lib/debug/lib/modules/<release>/vmlinux), builds patches from them
// with syscare-build and switches the guest kernel's behaviour with the modules.
package kbuild

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/syscare/syscare/tests/kernel/qemuboot"
)

// DebugModules are the modules whose debug files the test's kernel-debuginfo RPM
// carries (a packager's carries all; these are the ones the tests patch).
var DebugModules = []string{"fs/binfmt_misc.ko"}

// Inputs are the cached packages of one kernel.
type Inputs struct {
	ABI       string // the running kernel's release, "6.1.0-48-amd64"
	Version   string // the RPMs' Version, the upstream part of Debian's version
	Release   string // the RPMs' Release, Debian's revision
	SRPM      string // kernel-V-R.src.rpm: linux-source tarball and config
	Debuginfo string // kernel-debuginfo-V-R.x86_64.rpm: the vmlinux with debug info
	// NoConfigSRPM is the same source RPM without the config (a bad input).
	NoConfigSRPM string
	Vmlinuz      string // the bootable image
	Cache        string // the cache directory of this ABI
}

// Prepare downloads Debian's packages of the current kernel ABI (once) and makes the
// RPMs from them (once); both stay in qemuboot.Cache.
func Prepare(t testing.TB) *Inputs {
	t.Helper()
	abi := qemuboot.ABI(t)
	cache := qemuboot.Cache(t, abi)
	// Test packages run in parallel (rpmbuild/kernel's tests use these inputs too):
	// one makes the RPMs while the others wait for them.
	lock, err := os.OpenFile(filepath.Join(cache, ".inputs.lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	debs := filepath.Join(cache, "debs")
	image := qemuboot.Download(t, debs, "linux-image-"+abi)
	debVersion := qemuboot.DebVersion(t, image)
	version, release, ok := strings.Cut(debVersion, "-")
	if !ok {
		t.Fatalf("kernel test: linux-image-%s has version %q, want UPSTREAM-REVISION", abi, debVersion)
	}
	in := &Inputs{ABI: abi, Version: version, Release: release, Cache: cache, Vmlinuz: qemuboot.Image(t, abi)}
	rpms := filepath.Join(cache, "rpms")
	in.SRPM = filepath.Join(rpms, fmt.Sprintf("kernel-%s-%s.src.rpm", version, release))
	// "debuginfo-2": the debuginfo RPM carries DebugModules too.
	in.Debuginfo = filepath.Join(rpms, "debuginfo-2", fmt.Sprintf("kernel-debuginfo-%s-%s.x86_64.rpm", version, release))
	in.NoConfigSRPM = filepath.Join(rpms, "noconfig", fmt.Sprintf("kernel-%s-%s.src.rpm", version, release))
	if exists(in.SRPM) && exists(in.Debuginfo) && exists(in.NoConfigSRPM) {
		return in
	}
	series := strings.Join(strings.SplitN(version, ".", 3)[:2], ".") // 6.1.172 -> 6.1
	source := qemuboot.Download(t, debs, "linux-source-"+series+"="+debVersion)
	headers := qemuboot.Download(t, debs, "linux-headers-"+abi+"="+debVersion)
	dbg := qemuboot.Download(t, debs, "linux-image-"+abi+"-dbg="+debVersion)

	work, err := os.MkdirTemp(cache, ".rpms-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	top := filepath.Join(work, "top")
	for _, d := range []string{"SOURCES", "SPECS", "BUILD", "BUILDROOT", "RPMS", "SRPMS"} {
		os.MkdirAll(filepath.Join(top, d), 0o755)
	}
	if !exists(in.SRPM) || !exists(in.NoConfigSRPM) {
		sourceRPMs(t, in, top, work, source, headers, series)
	}
	if !exists(in.Debuginfo) {
		debuginfoRPM(t, in, top, work, dbg, series)
	}
	return in
}

// rpmbuildIn runs rpmbuild in top without payload compression (the payloads are
// compressed tarballs and a 600 MB vmlinux; compressing them again takes minutes).
func rpmbuildIn(t testing.TB, top string, args ...string) {
	t.Helper()
	base := []string{"--nodeps", "--define", "_topdir " + top, "--define", "_source_payload w0.ufdio", "--define", "_binary_payload w0.ufdio"}
	qemuboot.Run(t, top, nil, "rpmbuild", append(base, args...)...)
}

// sourceRPMs makes the kernel source RPM and its config-less twin.
func sourceRPMs(t testing.TB, in *Inputs, top, work, source, headers, series string) {
	abi, version, release := in.ABI, in.Version, in.Release
	src := filepath.Join(work, "src")
	qemuboot.Run(t, work, nil, "sh", "-c", fmt.Sprintf(
		"dpkg-deb --fsys-tarfile %s | tar -x -C %s ./usr/src/linux-source-%s.tar.xz", source, mkdir(t, src), series))
	tarball := fmt.Sprintf("linux-source-%s.tar.xz", series)
	if err := os.Rename(filepath.Join(src, "usr/src", tarball), filepath.Join(top, "SOURCES", tarball)); err != nil {
		t.Fatal(err)
	}
	hdr := filepath.Join(work, "hdr")
	qemuboot.Run(t, work, nil, "sh", "-c", fmt.Sprintf(
		"dpkg-deb --fsys-tarfile %s | tar -x -C %s ./usr/src/linux-headers-%s/.config", headers, mkdir(t, hdr), abi))
	config := "config-" + abi
	if err := os.Rename(filepath.Join(hdr, "usr/src/linux-headers-"+abi, ".config"), filepath.Join(top, "SOURCES", config)); err != nil {
		t.Fatal(err)
	}
	rpmbuild := func(args ...string) { rpmbuildIn(t, top, args...) }

	// The source RPM: %prep untars the tree and puts the config in place, as
	// openEuler's kernel.spec does.
	spec := func(withConfig bool) string {
		s := fmt.Sprintf(`Name: kernel
Version: %s
Release: %s
Summary: Debian's Linux %s as a kernel source RPM (syscare tests)
License: GPL-2.0-only
Source0: %s
`, version, release, series, tarball)
		if withConfig {
			s += "Source1: " + config + "\n"
		}
		s += fmt.Sprintf(`
%%description
The source of Debian's kernel %s, packaged the way an RPM distribution ships it.

%%prep
%%setup -q -n linux-source-%s
`, abi, series)
		if withConfig {
			s += "cp %{SOURCE1} .config\n"
		}
		return s + "\n%build\n\n%files\n"
	}
	specPath := filepath.Join(top, "SPECS", "kernel.spec")
	os.WriteFile(specPath, []byte(spec(false)), 0o644)
	rpmbuild("-bs", specPath)
	mkdir(t, filepath.Dir(in.NoConfigSRPM))
	moveInto(t, filepath.Join(top, "SRPMS", filepath.Base(in.SRPM)), in.NoConfigSRPM)
	os.WriteFile(specPath, []byte(spec(true)), 0o644)
	rpmbuild("-bs", specPath)
	moveInto(t, filepath.Join(top, "SRPMS", filepath.Base(in.SRPM)), in.SRPM)
}

// debuginfoRPM makes the kernel-debuginfo RPM with the vmlinux and DebugModules.
func debuginfoRPM(t testing.TB, in *Inputs, top, work, dbg, series string) {
	abi, version, release := in.ABI, in.Version, in.Release
	rpmbuild := func(args ...string) { rpmbuildIn(t, top, args...) }

	// The debuginfo RPM, built from a spec of the same name, version and release so
	// that its SOURCERPM is the source RPM above.
	dbgDir := filepath.Join(work, "dbg")
	members := "./usr/lib/debug/boot/vmlinux-" + abi
	for _, m := range DebugModules {
		members += " ./usr/lib/debug/lib/modules/" + abi + "/kernel/" + m
	}
	qemuboot.Run(t, work, nil, "sh", "-c", fmt.Sprintf(
		"dpkg-deb --fsys-tarfile %s | tar -x -C %s %s", dbg, mkdir(t, dbgDir), members))
	vmlinux := filepath.Join(dbgDir, "usr/lib/debug/boot", "vmlinux-"+abi)
	dbgSpec := fmt.Sprintf(`Name: kernel
Version: %s
Release: %s
Summary: Debian's Linux %s (syscare tests)
License: GPL-2.0-only
%%global debug_package %%{nil}
%%global __os_install_post %%{nil}
%%global _build_id_links none

%%description
Debian's kernel %s.

%%package debuginfo
Summary: Debug information of the kernel %s

%%description debuginfo
The kernel image with its debug information.

%%install
mkdir -p %%{buildroot}/usr/lib/debug/lib/modules/%s
ln %s %%{buildroot}/usr/lib/debug/lib/modules/%s/vmlinux
cp -r %s/usr/lib/debug/lib/modules/%s/kernel %%{buildroot}/usr/lib/debug/lib/modules/%s/

%%files debuginfo
/usr/lib/debug/lib/modules/%s
`, version, release, series, abi, abi, abi, vmlinux, abi, dbgDir, abi, abi, abi)
	dbgSpecPath := filepath.Join(top, "SPECS", "kernel-debuginfo.spec")
	os.WriteFile(dbgSpecPath, []byte(dbgSpec), 0o644)
	rpmbuild("-bb", dbgSpecPath)
	moveInto(t, filepath.Join(top, "RPMS", "x86_64", filepath.Base(in.Debuginfo)), in.Debuginfo)
}

// Module returns the shipped module at path (under lib/modules/<abi>/kernel, as in
// DebugModules) from the kernel image package, extracted once into the cache.
func (in *Inputs) Module(t testing.TB, path string) string {
	t.Helper()
	dst := filepath.Join(in.Cache, "modules", path)
	if exists(dst) {
		return dst
	}
	image := qemuboot.Download(t, filepath.Join(in.Cache, "debs"), "linux-image-"+in.ABI)
	tmp := t.TempDir()
	qemuboot.Run(t, tmp, nil, "sh", "-c", fmt.Sprintf("dpkg-deb --fsys-tarfile %s | tar -x ./lib/modules/%s/kernel/%s", image, in.ABI, path))
	mkdir(t, filepath.Dir(dst))
	qemuboot.CopyFile(t, filepath.Join(tmp, "lib/modules", in.ABI, "kernel", path), dst+".part", 0o644)
	if err := os.Rename(dst+".part", dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func mkdir(t testing.TB, d string) string {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func moveInto(t testing.TB, from, to string) {
	t.Helper()
	mkdir(t, filepath.Dir(to))
	if err := os.Rename(from, to); err != nil {
		t.Fatalf("kernel test: %v", err)
	}
}

// TestmodSRPM makes the source RPM of testdata/testmod, an out-of-tree module, and
// the module as its package ships it (built against Debian's headers of the kernel).
func (in *Inputs) TestmodSRPM(t testing.TB) (srpm, shipped string) {
	t.Helper()
	top := t.TempDir()
	src, _ := filepath.Abs("testdata/testmod")
	mkdir(t, filepath.Join(top, "SOURCES"))
	qemuboot.Run(t, top, nil, "sh", "-c", fmt.Sprintf("mkdir -p x/testmod-1 && cp %s/testmod.c %s/Makefile x/testmod-1/ && tar -czf SOURCES/testmod-1.tar.gz -C x testmod-1", src, src))
	rpmbuildIn(t, top, "-bs", filepath.Join(src, "testmod.spec"))
	build := qemuboot.Headers(t, in.ABI)
	dir := filepath.Join(top, "x", "testmod-1")
	qemuboot.Run(t, dir, nil, "make", "-s", "-C", build, "M="+dir, "modules")
	return filepath.Join(top, "SRPMS", "testmod-1-1.src.rpm"), filepath.Join(dir, "testmod.ko")
}
