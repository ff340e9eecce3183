package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// page is one man page and where its text comes from.
type page struct {
	name    string
	section int
	manual  string   // the footer's manual name
	summary string   // the NAME line after "name \-"
	command []string // the program and arguments that print the help; command[0] is looked up in -bin
	extract string   // when set, only the help from the line that starts with it on (dnf's own options are dnf(8)'s)
	godoc   string   // instead of a command: the package whose doc comment is the page
	files   []string // FILES section: "path\twhat"
	seeAlso []string
}

var pages = []page{
	{
		name: "syscare", section: 8, manual: "System Administration",
		summary: "manage hot patches of running processes and of the kernel",
		command: []string{"syscare", "--help"},
		files: []string{
			"/usr/lib/syscare/patches/\tinstalled patches, one directory per patch UUID",
			"/var/lib/syscare/\tthe helper's saved patch states",
		},
		seeAlso: []string{"syscare-build(1)", "syscare-helper(8)", "upatch-manage(8)", "dnf-hotpatch(8)", "upatch(5)"},
	},
	{
		name: "syscare-build", section: 1, manual: "User Commands",
		summary: "build a hot patch RPM from a source RPM, its debuginfo and a fix",
		command: []string{"syscare-build", "--help"},
		seeAlso: []string{"syscare(8)", "upatch(5)", "rpmbuild(8)"},
	},
	{
		name: "upatch-manage", section: 8, manual: "System Administration",
		summary: "apply a user-space hot patch to running processes or remove it",
		command: []string{"upatch-manage", "--help"},
		seeAlso: []string{"upatch(5)", "syscare(8)", "syscare-build(1)"},
	},
	{
		name: "syscare-helper", section: 8, manual: "System Administration",
		summary: "the SysCare D-Bus service that applies and removes hot patches",
		command: []string{"syscare-helper", "--help"},
		files: []string{
			"/usr/lib/syscare/patches/\tinstalled patches, one directory per patch UUID",
			"/var/lib/syscare/\tsaved patch states and the operation journal",
			"/usr/share/dbus-1/system-services/org.openeuler.SysCare1.service\tbus activation",
			"/usr/lib/systemd/system/syscare-helper.service\tthe systemd unit",
		},
		seeAlso: []string{"syscare(8)", "dnf-hotpatch(8)", "journalctl(1)"},
	},
	{
		name: "dnf-hotpatch", section: 8, manual: "System Administration",
		summary: "DNF plugin: list, install and activate hot patches from repositories",
		command: []string{"dnf", "--releasever=1", "--setopt=pluginpath={src}/dnf-plugin", "hotpatch", "--help"},
		extract: "Hotpatch command-specific options:",
		files:   []string{"/etc/dnf/plugins/hotpatch.conf\tthe plugin's configuration"},
		seeAlso: []string{"dnf(8)", "syscare(8)", "syscare-helper(8)"},
	},
	{
		name: "upatch", section: 5, manual: "File Formats",
		summary: "the SysCare user-space patch object format",
		godoc:   "runtime/patchobj",
		files:   []string{"/usr/include/syscare/upatch.h\tmacros for writing a patch object in C"},
		seeAlso: []string{"upatch-manage(8)", "syscare-build(1)", "elf(5)"},
	},
}

func (p page) file() string { return fmt.Sprintf("%s.%d", p.name, p.section) }

type sourceDirs struct{ bin, src string }

// source returns the page's text: the program's help or the package's doc comment.
func (p page) source(d sourceDirs) (string, error) {
	if p.godoc != "" {
		return packageDoc(filepath.Join(d.src, p.godoc))
	}
	args := make([]string, len(p.command))
	for i, a := range p.command {
		args[i] = strings.ReplaceAll(a, "{src}", d.src)
	}
	prog := args[0]
	if _, err := os.Stat(filepath.Join(d.bin, prog)); err == nil {
		prog = filepath.Join(d.bin, prog)
	}
	cmd := exec.Command(prog, args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	text := out.String()
	if p.extract != "" {
		i := strings.Index(text, "\n"+p.extract)
		if i < 0 {
			return "", fmt.Errorf("%s: no %q in the help", strings.Join(args, " "), p.extract)
		}
		usage := "usage: " + strings.Join(append([]string{"dnf"}, args[len(args)-2]), " ") + " [OPTIONS] [SUBCOMMAND] [ID...]\n\n"
		text = usage + "Options:" + text[i+1+len(p.extract):]
	}
	return text, nil
}
