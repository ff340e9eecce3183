package kernel

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/testenv"
)

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
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

// kernelABI reads the ABI of Debian's current kernel from the linux-image-amd64
// metapackage ("linux-image-6.1.0-56-amd64" gives "6.1.0-56-amd64").
func kernelABI(t *testing.T) string {
	re := regexp.MustCompile(`Depends: linux-image-([0-9][^\s]*-amd64)\b`)
	for attempt := 0; attempt < 2; attempt++ {
		out, _ := exec.Command("apt-cache", "depends", "linux-image-amd64").CombinedOutput()
		if m := re.FindStringSubmatch(string(out)); m != nil {
			return m[1]
		}
		if attempt == 0 {
			t.Log("kernel test: apt-cache knows no linux-image-amd64; running apt-get update")
			aptUpdate(t)
		}
	}
	t.Fatal("kernel test: apt-cache depends linux-image-amd64 names no kernel ABI; " +
		"this test needs Debian's apt with its package lists (apt-get update)")
	return ""
}

func aptUpdate(t *testing.T) {
	if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
		t.Logf("apt-get update: %v\n%s", err, out)
	}
}

// headers installs linux-headers-<abi>-amd64 if its build tree is missing.
func headers(t *testing.T, abi string) string {
	build := filepath.Join("/lib/modules", abi, "build")
	if _, err := os.Stat(filepath.Join(build, "Makefile")); err == nil {
		return build
	}
	pkg := "linux-headers-" + abi
	t.Logf("kernel test: installing %s (apt-get install) to build livepatch modules", pkg)
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err != nil {
		aptUpdate(t)
		if out, err := install(); err != nil {
			t.Fatalf("kernel test: apt-get install %s: %v (this test needs apt access to Debian's packages)\n%s", pkg, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(build, "Makefile")); err != nil {
		t.Fatalf("kernel test: %s installed but %s is missing: %v", pkg, build, err)
	}
	return build
}

// kernelImage returns the vmlinuz of linux-image-<abi>, downloaded with apt-get download
// and extracted once into the cache.
func kernelImage(t *testing.T, abi string) string {
	cache, err := testenv.CacheDir(filepath.Join("kernel", abi))
	if err != nil {
		t.Fatal(err)
	}
	vmlinuz := filepath.Join(cache, "vmlinuz")
	if _, err := os.Stat(vmlinuz); err == nil {
		return vmlinuz
	}
	pkg := "linux-image-" + abi
	t.Logf("kernel test: downloading %s (apt-get download) into %s", pkg, cache)
	tmp := t.TempDir()
	if out, err := exec.Command("sh", "-c", "cd "+tmp+" && apt-get download "+pkg).CombinedOutput(); err != nil {
		aptUpdate(t)
		if out2, err := exec.Command("sh", "-c", "cd "+tmp+" && apt-get download "+pkg).CombinedOutput(); err != nil {
			t.Fatalf("kernel test: apt-get download %s: %v (this test needs apt access to Debian's packages)\n%s%s", pkg, err, out, out2)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("kernel test: apt-get download %s left %v", pkg, debs)
	}
	run(t, tmp, nil, "sh", "-c", fmt.Sprintf("dpkg-deb --fsys-tarfile %s | tar -x ./boot/vmlinuz-%s", debs[0], abi))
	// Rename into place so a interrupted run never leaves a partial image in the cache.
	part := vmlinuz + ".part"
	b, err := os.ReadFile(filepath.Join(tmp, "boot", "vmlinuz-"+abi))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(part, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(part, vmlinuz); err != nil {
		t.Fatal(err)
	}
	return vmlinuz
}

// otherRelease turns the ABI into another one of the same length ("6.1.0-56-amd64"
// gives "6.1.0-99-amd64"), so the module's vermagic can be rewritten in place.
func otherRelease(abi string) string {
	i := strings.IndexByte(abi, '-')
	j := strings.IndexByte(abi[i+1:], '-')
	if i < 0 || j <= 0 {
		return strings.Repeat("9", len(abi))
	}
	num := []byte(abi[i+1 : i+1+j])
	for k := range num {
		if num[k] == '9' {
			num[k] = '8'
		} else {
			num[k] = '9'
		}
	}
	return abi[:i+1] + string(num) + abi[i+1+j:]
}

// initramfs writes a newc cpio archive with busybox, the init script, the guest and
// the modules, and returns its path.
func initramfs(t *testing.T, work, guest string, modules map[string]string) string {
	root := filepath.Join(work, "root")
	for _, d := range []string{"bin", "proc", "sys", "dev", "modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("kernel test: busybox not found; tests/deps.sh installs busybox-static")
	}
	if static, err := isStatic(busybox); err != nil || !static {
		t.Fatalf("kernel test: %s is not a static executable (%v); the initramfs needs busybox-static", busybox, err)
	}
	copyFile(t, busybox, filepath.Join(root, "bin/busybox"), 0o755)
	for _, applet := range []string{"sh", "mount", "poweroff", "cat", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, guest, filepath.Join(root, "guest"), 0o755)
	for name, src := range modules {
		copyFile(t, src, filepath.Join(root, "modules", name), 0o644)
	}
	init := `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "KPTEST boot $(cat /proc/uptime)"
/guest /modules
echo "KPTEST exit $?"
poweroff -f
`
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	cpio := filepath.Join(work, "initramfs.cpio")
	run(t, root, nil, "sh", "-c", "find . | busybox cpio -o -H newc > "+cpio)
	return cpio
}

// isStatic reports whether the ELF at path has no program interpreter.
func isStatic(path string) (bool, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// step is one line the guest reports (tests/kernel/guest.Step).
type step struct {
	Step   string `json:"step"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

func TestLivepatchUnderQemu(t *testing.T) {
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "the kernel test installs the kernel headers package")
	for _, c := range []string{"apt-get", "apt-cache", "dpkg-deb", "make", "gcc", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("kernel test: %s not found (Debian with tests/deps.sh installed is required)", c)
		}
	}
	abi := kernelABI(t)
	build := headers(t, abi)
	vmlinuz := kernelImage(t, abi)
	work := t.TempDir()

	// Modules, built out of tree against the headers.
	mods := filepath.Join(work, "mods")
	if err := os.MkdirAll(mods, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"Makefile", "livepatch-cmdline.c", "livepatch-pause.c"} {
		copyFile(t, filepath.Join("testdata", f), filepath.Join(mods, f), 0o644)
	}
	run(t, mods, nil, "make", "-s", "-C", build, "M="+mods, "modules")
	// Another build of the same module (same name, other text): Load must not take the
	// loaded one for it.
	v2 := filepath.Join(work, "v2")
	if err := os.MkdirAll(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join("testdata", "livepatch-cmdline.c"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(v2, "livepatch-cmdline.c"), bytes.Replace(src, []byte("live patched"), []byte("live patched v2"), 1), 0o644)
	os.WriteFile(filepath.Join(v2, "Makefile"), []byte("obj-m := livepatch-cmdline.o\n"), 0o644)
	run(t, v2, nil, "make", "-s", "-C", build, "M="+v2, "modules")
	cmdline := filepath.Join(mods, "livepatch-cmdline.ko")
	ko, err := os.ReadFile(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	// The same module claiming another release: only the vermagic differs.
	other := otherRelease(abi)
	patched := bytes.Replace(ko, []byte("vermagic="+abi+" "), []byte("vermagic="+other+" "), 1)
	if bytes.Equal(patched, ko) {
		t.Fatalf("vermagic=%s not found in %s", abi, cmdline)
	}
	otherKo := filepath.Join(work, "other-release.ko")
	if err := os.WriteFile(otherKo, patched, 0o644); err != nil {
		t.Fatal(err)
	}

	guest := filepath.Join(work, "guest")
	run(t, ".", []string{"CGO_ENABLED=0"}, "go", "build", "-o", guest, "./guest")

	cpio := initramfs(t, work, guest, map[string]string{
		"livepatch-cmdline.ko":    cmdline,
		"livepatch-pause.ko":      filepath.Join(mods, "livepatch-pause.ko"),
		"other-release.ko":        otherKo,
		"livepatch-cmdline-v2.ko": filepath.Join(v2, "livepatch-cmdline.ko"),
	})

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	// TCG only: KVM hangs on these machines (see ENVIRONMENT.md).
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512",
		"-smp", "2", "-nographic", "-no-reboot", "-kernel", vmlinuz, "-initrd", cpio,
		"-append", "console=ttyS0 panic=-1 quiet syscare_marker=1")
	out, err := qemu.CombinedOutput()
	t.Logf("qemu ran %v", time.Since(start).Round(time.Millisecond))
	os.WriteFile(filepath.Join(work, "console.log"), out, 0o644)
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}

	steps := map[string]step{}
	done := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		rest, ok := strings.CutPrefix(line, "KPTEST ")
		if !ok {
			continue
		}
		t.Log(line)
		if strings.HasPrefix(rest, "done ") {
			done = true
			continue
		}
		var s step
		if json.Unmarshal([]byte(rest), &s) == nil {
			steps[s.Step] = s
		}
	}
	if !done {
		t.Fatalf("guest did not finish; console:\n%s", out)
	}
	// Every step must be reported and pass; some details are checked here as well so
	// the host does not rely only on the guest's own verdict.
	want := map[string]string{
		"release":          abi,
		"cmdline-before":   "syscare_marker=1",
		"load":             "<nil>",
		"load-state":       "enabled",
		"cmdline-patched":  "syscare kpatch: live patched",
		"list":             "livepatch_cmdline",
		"other-build":      "another build of the module is loaded",
		"disable":          "<nil>",
		"disable-state":    "loaded (disabled)",
		"cmdline-disabled": "syscare_marker=1",
		"enable-freed":     "must be reloaded",
		"reload":           "syscare kpatch: live patched",
		"unload":           "<nil>",
		"unload-state":     "unloaded",
		"cmdline-unloaded": "syscare_marker=1",
		"other-release":    other,
		"stall-sleeper":    "in pause: true",
		"stall-timeout":    "stalled tasks: ",
		"stall-state":      "unloaded",
		"stall-retry":      "<nil>",
		"stall-unload":     "<nil>",
	}
	for name, sub := range want {
		s, ok := steps[name]
		switch {
		case !ok:
			t.Errorf("step %s: not reported", name)
		case !s.OK:
			t.Errorf("step %s: failed: %s", name, s.Detail)
		case !strings.Contains(s.Detail, sub):
			t.Errorf("step %s: detail %q lacks %q", name, s.Detail, sub)
		}
	}
	if s := steps["stall-timeout"]; !strings.Contains(s.Detail, "reverted") || strings.Contains(s.Detail, "not reverted") {
		t.Errorf("stall-timeout: transition not reverted: %s", s.Detail)
	}
}
