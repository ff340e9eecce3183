package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/kernel/qemuboot"
	"github.com/syscare/syscare/tests/testenv"
)

// rebootGuest is the guest of the kexec test, a shell script: on the first boot it runs
// the real `syscare reboot` (no helper and no systemd in the guest: it warns that it
// cannot list the patches and boots the loaded kernel itself); the second boot is told
// apart by the argument syscare reboot --append added to the command line.
const rebootGuest = `#!/bin/sh
case "$(cat /proc/cmdline)" in
*syscare_kexecd=1*) echo "KPTEST second boot: $(cat /proc/cmdline)"; exit 0 ;;
esac
echo "KPTEST first boot"
/bin/busybox chmod 755 /files/syscare
/files/syscare reboot --kernel /files/vmlinuz --initrd /files/inner.cpio --append syscare_kexecd=1
echo "KPTEST syscare reboot returned $?"
`

// TestRebootKexecUnderQemu boots Debian's kernel, runs `syscare reboot` in it, and
// checks that the same kernel came up again through kexec (no firmware, qemu never
// reset: it runs with -no-reboot) with the running command line kept.
func TestRebootKexecUnderQemu(t *testing.T) {
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "the kernel test downloads Debian's kernel package with apt")
	abi := qemuboot.ABI(t)
	vmlinuz := qemuboot.Image(t, abi)
	work := t.TempDir()
	script := filepath.Join(work, "guest.sh")
	os.WriteFile(script, []byte(rebootGuest), 0o755)
	syscare := filepath.Join(work, "syscare")
	qemuboot.Run(t, "../..", []string{"CGO_ENABLED=0"}, "go", "build", "-o", syscare, "./helper/cmd/syscare")

	inner := qemuboot.Initramfs(t, filepath.Join(work, "inner"), script, nil)
	outer := qemuboot.Initramfs(t, filepath.Join(work, "outer"), script, map[string]string{
		"syscare": syscare, "vmlinuz": vmlinuz, "inner.cpio": inner})

	out := string(qemuboot.Boot(t, vmlinuz, outer, 10*time.Minute, "syscare_marker=1"))
	os.WriteFile(filepath.Join(work, "console.log"), []byte(out), 0o644)
	first := strings.Index(out, "KPTEST first boot")
	second := strings.Index(out, "KPTEST second boot")
	if first < 0 || second < first || !strings.Contains(out[second:], "syscare_marker=1") ||
		!strings.Contains(out, "loaded /files/vmlinuz for kexec") || !strings.Contains(out, "cannot list the hot patches") {
		t.Fatalf("no second boot through kexec:\n%s", out)
	}
}
