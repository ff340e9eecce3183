package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/kexec"
)

const rebootUsage = `usage: syscare [--bus ADDR] reboot [--kernel FILE] [--initrd FILE] [--append ARGS]
                      [--no-kexec] [--force] [--dry-run]

Restarts the system; the ACCEPTED hot patches come back when syscare-helper starts at
boot (ACTIVED ones do not: they are listed first). With kexec (the default where the
kernel allows it) the running release's kernel (/boot/vmlinuz-RELEASE and its
initramfs, or --kernel/--initrd) is loaded with the running command line (plus
--append) and booted without going through the firmware: "systemctl kexec" where
systemd runs, else the kernel is started at once. If the kernel cannot be loaded the
system reboots normally and says why. --force starts the kernel at once even under
systemd (services are not stopped); --dry-run says what would be done.
`

func runReboot(ctx context.Context, bus string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reboot", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	kernel := fs.String("kernel", "", "")
	initrd := fs.String("initrd", "", "")
	appendArgs := fs.String("append", "", "")
	noKexec := fs.Bool("no-kexec", false, "")
	force := fs.Bool("force", false, "")
	dry := fs.Bool("dry-run", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, rebootUsage)
			return nil
		}
		return usageError{"reboot: " + err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("reboot takes no argument %q", fs.Arg(0))}
	}
	warnNotAccepted(ctx, bus, stderr)

	useKexec := !*noKexec
	if useKexec {
		if err := loadKernel(*kernel, *initrd, *appendArgs, *dry, stdout); err != nil {
			fmt.Fprintf(stderr, "syscare: %v; rebooting without kexec\n", err)
			useKexec = false
		}
	}
	// systemd runs when /run/systemd/system exists (its own sd_booted test).
	_, err := os.Stat("/run/systemd/system")
	systemd := err == nil
	verb, now := "reboot", "reboot"
	if useKexec {
		verb, now = "kexec", "boot the loaded kernel"
	}
	switch {
	case *dry && systemd && !*force:
		fmt.Fprintf(stdout, "would run: systemctl %s\n", verb)
		return nil
	case *dry:
		fmt.Fprintf(stdout, "would %s now\n", now)
		return nil
	case systemd && !*force:
		cmd := exec.CommandContext(ctx, "systemctl", verb)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("systemctl %s: %w", verb, err)
		}
		return nil
	case useKexec:
		fmt.Fprintln(stdout, "booting the loaded kernel")
		return kexec.Exec()
	}
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// loadKernel loads the kernel kexec will boot.
func loadKernel(kernel, initrd, extra string, dry bool, stdout io.Writer) error {
	if kernel == "" {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return err
		}
		var err error
		if kernel, initrd, err = kexec.Find("/boot", unix.ByteSliceToString(u.Release[:])); err != nil {
			return err
		}
	}
	cmdline, err := kexec.CmdLine()
	if err != nil {
		return err
	}
	if extra != "" {
		cmdline = strings.TrimSpace(cmdline + " " + extra)
	}
	if dry {
		fmt.Fprintf(stdout, "would load %s (initramfs %q) with command line %q\n", kernel, initrd, cmdline)
		return nil
	}
	if err := kexec.Load(kernel, initrd, cmdline); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "loaded %s for kexec\n", kernel)
	return nil
}

// warnNotAccepted lists the patches that are on but will not come back after the
// reboot. A helper that cannot be reached does not stop a reboot.
func warnNotAccepted(ctx context.Context, bus string, stderr io.Writer) {
	c, err := syscarebus.Connect(bus)
	if err == nil {
		defer c.Close()
		var es []syscarebus.ListEntry
		if es, err = c.List(ctx); err == nil {
			for _, e := range es {
				if e.Status == syscarebus.StatusActived || e.Status == syscarebus.StatusDeactived {
					fmt.Fprintf(stderr, "syscare: warning: %s is %s, not ACCEPTED: it will not be back after the reboot\n", e.Name, e.Status)
				}
			}
			return
		}
	}
	fmt.Fprintf(stderr, "syscare: warning: cannot list the hot patches (%s); rebooting anyway\n", syscarebus.ErrorMessage(err))
}
