// Package qemuboot is the kernel tests' harness: it finds Debian's current kernel ABI,
// downloads packages of that kernel into a cache that outlives the test run, builds an
// initramfs around a static guest program, and boots the kernel under qemu (TCG).
package qemuboot

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/testenv"
)

// Run runs a command in dir and fails the test with its output when it fails.
func Run(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ABI reads the ABI of Debian's current kernel from the linux-image-amd64 metapackage
// ("linux-image-6.1.0-48-amd64" gives "6.1.0-48-amd64").
func ABI(t testing.TB) string {
	t.Helper()
	re := regexp.MustCompile(`Depends: linux-image-([0-9][^\s]*-amd64)\b`)
	for attempt := 0; attempt < 2; attempt++ {
		out, _ := exec.Command("apt-cache", "depends", "linux-image-amd64").CombinedOutput()
		if m := re.FindStringSubmatch(string(out)); m != nil {
			return m[1]
		}
		if attempt == 0 {
			t.Log("kernel test: apt-cache knows no linux-image-amd64; running apt-get update")
			AptUpdate(t)
		}
	}
	t.Fatal("kernel test: apt-cache depends linux-image-amd64 names no kernel ABI; " +
		"this test needs Debian's apt with its package lists (apt-get update)")
	return ""
}

// AptUpdate refreshes apt's package lists (failures are logged: the caller's next
// apt command reports what is missing).
func AptUpdate(t testing.TB) {
	if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
		t.Logf("apt-get update: %v\n%s", err, out)
	}
}

// Cache returns the cache directory of abi, made if needed: downloads and prepared
// trees are kept there between runs and test packages (testenv.CacheDir).
func Cache(t testing.TB, abi string) string {
	t.Helper()
	dir, err := testenv.CacheDir(filepath.Join("kernel", abi))
	if err != nil {
		t.Fatalf("kernel test cache: %v", err)
	}
	return dir
}

// Download fetches the .deb of pkg (NAME or NAME=VERSION) into dir with apt-get download,
// unless a file of that package is there already, and returns its path.
func Download(t testing.TB, dir, pkg string) string {
	t.Helper()
	name, version, _ := strings.Cut(pkg, "=")
	pattern := name + "_*.deb"
	if version != "" {
		pattern = name + "_" + strings.ReplaceAll(version, ":", "%3a") + "_*.deb"
	}
	if m, _ := filepath.Glob(filepath.Join(dir, pattern)); len(m) == 1 {
		return m[0]
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Into a private directory first: an interrupted download never looks complete.
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	t.Logf("kernel test: apt-get download %s into %s", pkg, dir)
	get := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "download", "-q", pkg)
		cmd.Dir = tmp
		return cmd.CombinedOutput()
	}
	if out, err := get(); err != nil {
		AptUpdate(t)
		if out2, err := get(); err != nil {
			t.Fatalf("kernel test: apt-get download %s: %v (this test needs apt access to Debian's packages)\n%s%s", pkg, err, out, out2)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pattern))
	if len(debs) != 1 {
		t.Fatalf("kernel test: apt-get download %s left %v", pkg, debs)
	}
	dst := filepath.Join(dir, filepath.Base(debs[0]))
	if err := os.Rename(debs[0], dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// Headers installs linux-headers-<abi> if its build tree is missing and returns
// /lib/modules/<abi>/build, against which out-of-tree modules build as a packager's do.
func Headers(t testing.TB, abi string) string {
	t.Helper()
	build := filepath.Join("/lib/modules", abi, "build")
	if _, err := os.Stat(filepath.Join(build, "Makefile")); err == nil {
		return build
	}
	pkg := "linux-headers-" + abi
	t.Logf("kernel test: installing %s (apt-get install) to build modules", pkg)
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err != nil {
		AptUpdate(t)
		if out, err := install(); err != nil {
			t.Fatalf("kernel test: apt-get install %s: %v\n%s", pkg, err, out)
		}
	}
	return build
}

// DebVersion reads the Version field of a .deb.
func DebVersion(t testing.TB, deb string) string {
	t.Helper()
	return strings.TrimSpace(Run(t, "", nil, "dpkg-deb", "-f", deb, "Version"))
}

// Image returns the vmlinuz of linux-image-<abi>, extracted once into the cache.
func Image(t testing.TB, abi string) string {
	t.Helper()
	cache := Cache(t, abi)
	vmlinuz := filepath.Join(cache, "vmlinuz")
	if _, err := os.Stat(vmlinuz); err == nil {
		return vmlinuz
	}
	deb := Download(t, filepath.Join(cache, "debs"), "linux-image-"+abi)
	tmp := t.TempDir()
	Run(t, tmp, nil, "sh", "-c", fmt.Sprintf("dpkg-deb --fsys-tarfile %s | tar -x ./boot/vmlinuz-%s", deb, abi))
	if err := os.Rename(filepath.Join(tmp, "boot", "vmlinuz-"+abi), vmlinuz+".part"); err != nil {
		CopyFile(t, filepath.Join(tmp, "boot", "vmlinuz-"+abi), vmlinuz+".part", 0o644)
	}
	if err := os.Rename(vmlinuz+".part", vmlinuz); err != nil {
		t.Fatal(err)
	}
	return vmlinuz
}

// CopyFile copies src to dst with mode.
func CopyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// Initramfs writes a newc cpio archive with busybox, an init script that mounts proc,
// sys and dev and runs "/guest /files", the guest and the files, and returns its path.
// A file name starting with "/" is a path in the guest's root; others go to /files.
func Initramfs(t testing.TB, work, guest string, files map[string]string) string {
	t.Helper()
	root := filepath.Join(work, "root")
	for _, d := range []string{"bin", "proc", "sys", "dev", "files"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("kernel test: busybox not found; tests/deps.sh installs busybox-static")
	}
	if f, err := elf.Open(busybox); err != nil {
		t.Fatalf("kernel test: %s: %v", busybox, err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatalf("kernel test: %s is not a static executable; the initramfs needs busybox-static", busybox)
			}
		}
		f.Close()
	}
	CopyFile(t, busybox, filepath.Join(root, "bin/busybox"), 0o755)
	for _, applet := range []string{"sh", "mount", "poweroff", "cat", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	CopyFile(t, guest, filepath.Join(root, "guest"), 0o755)
	for name, src := range files {
		dst := filepath.Join(root, "files", name)
		if strings.HasPrefix(name, "/") {
			dst = filepath.Join(root, name)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		CopyFile(t, src, dst, 0o644)
	}
	init := `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
/guest /files
echo "KPTEST exit $?"
poweroff -f
`
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	cpio := filepath.Join(work, "initramfs.cpio")
	Run(t, root, nil, "sh", "-c", "find . | busybox cpio -o -H newc > "+cpio)
	return cpio
}

// Boot runs the kernel with the initramfs under qemu (TCG: KVM hangs on these
// machines) and returns the console output; it fails the test if qemu fails.
func Boot(t testing.TB, vmlinuz, cpio string, timeout time.Duration, cmdline string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512",
		"-smp", "2", "-nographic", "-no-reboot", "-kernel", vmlinuz, "-initrd", cpio,
		"-append", "console=ttyS0 panic=-1 quiet "+cmdline)
	out, err := qemu.CombinedOutput()
	t.Logf("qemu ran %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}
	return bytes.ReplaceAll(out, []byte("\r"), nil)
}
