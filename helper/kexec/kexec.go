// Package kexec loads a kernel for a fast reboot (kexec_file_load) and boots it: the
// mechanics of `syscare reboot`, which skips the firmware and the boot loader.
package kexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Find returns the kernel and the initramfs of release under boot (usually /boot), by
// the names RPM distributions (vmlinuz-R, initramfs-R.img) and Debian (initrd.img-R)
// give them; the initramfs is "" when there is none.
func Find(boot, release string) (kernel, initrd string, err error) {
	kernel = filepath.Join(boot, "vmlinuz-"+release)
	if _, err := os.Stat(kernel); err != nil {
		return "", "", fmt.Errorf("kernel of the running release %s: %w", release, err)
	}
	for _, n := range []string{"initramfs-" + release + ".img", "initrd.img-" + release, "initrd-" + release} {
		if _, err := os.Stat(filepath.Join(boot, n)); err == nil {
			return kernel, filepath.Join(boot, n), nil
		}
	}
	return kernel, "", nil
}

// Load loads kernel (and initrd, unless "") with cmdline as the kernel kexec boots.
func Load(kernel, initrd, cmdline string) error {
	kf, err := os.Open(kernel)
	if err != nil {
		return fmt.Errorf("kexec load: %w", err)
	}
	defer kf.Close()
	initFd, flags := -1, 0
	if initrd == "" {
		flags |= unix.KEXEC_FILE_NO_INITRAMFS
	} else {
		f, err := os.Open(initrd)
		if err != nil {
			return fmt.Errorf("kexec load: %w", err)
		}
		defer f.Close()
		initFd = int(f.Fd())
	}
	if err := unix.KexecFileLoad(int(kf.Fd()), initFd, cmdline, flags); err != nil {
		return fmt.Errorf("kexec load %s: %w", kernel, err)
	}
	return nil
}

// Loaded reports whether a kernel is loaded for kexec.
func Loaded() bool {
	b, err := os.ReadFile("/sys/kernel/kexec_loaded")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// Exec boots the loaded kernel now: file systems are synced, nothing is stopped
// cleanly (a service manager's `systemctl kexec` does that; this is for systems
// without one and for --force).
func Exec() error {
	if !Loaded() {
		return errors.New("kexec: no kernel loaded")
	}
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC)
}

// CmdLine returns the running kernel's command line, the one a kexec boot keeps.
func CmdLine() (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
