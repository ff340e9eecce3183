// Command syscare-build makes a hot patch RPM from a source RPM, its debuginfo RPMs and
// .patch files (`syscare build` runs it). The same binary is the compiler wrapper of
// the build (under a compiler's name) and `syscare-build diff ORIG.o PATCHED.o`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/syscare/syscare/internal/termline"
	"github.com/syscare/syscare/rpmbuild/builder"
	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/diff"
)

// Exit statuses (documented in the help text).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitNoChange    = 3
	exitUnpatchable = 4
)

const usage = `NAME
    syscare-build - build a hot patch RPM from a source RPM, its debuginfo and a fix

SYNOPSIS
    syscare-build --patch-name NAME [--patch-version V] [--patch-release R]
        [--patch-description TEXT] --source PKG.src.rpm --debuginfo PKG-debuginfo.rpm
        [--debuginfo ...] --patch FIX.patch [--patch ...] [--output DIR] [--jobs N]
        [--workdir DIR] [--skip-cleanup] [--skip-compiler-check] [--dry-run]
        [--kernel-config FILE] [--kernel-cache DIR] [--verbose] [--json]
    syscare-build diff [-o PATCH.o] [-alias-prefix P] ORIG.o PATCHED.o
    syscare-build resolve --debug-file TARGET.debug -o OUT.o PATCH.o

DESCRIPTION
    Builds the hot patch NAME of the package built from PKG.src.rpm, for the binaries
    whose debug files PKG-debuginfo.rpm ships. It unpacks the source RPM and runs its
    %prep; builds it once with the compiler captured (cc, gcc, c++ and g++ run through a
    wrapper that adds -ffunction-sections -fdata-sections -gdwarf, turns LTO off and
    records every compile and link; calls by absolute path are caught by binding the
    wrapper over the compilers in a private mount namespace); applies the .patch files
    and compiles again only the translation units whose sources or included headers
    changed; diffs each rebuilt object against its original; links one patch object per
    patched executable or library, bound to the build-id of the shipped file; and writes
    the patch RPM and the patch's source RPM.

    Static archives the package makes (with ar, ranlib, libtool, thin or not, nested or
    not) are read back: a member counts for the object whose content it holds, whatever
    its name and however the archive is linked (absolute or relative path, -L/-l).

    Before any verdict, the cross-check links every shipped binary whose inputs changed
    twice more, with its recorded link command, from the original and from the rebuilt
    objects, and compares the two function by function (relocated fields compared by
    what they refer to). A function that differs but is not replaced by the patch, or a
    data object whose initial value differs, is an error naming the binary and the
    function. A binary that needs nothing replaced (it shares a changed object with
    another, but only gains functions nothing in it calls) gets no patch object. The
    list "Shipped binaries" gives, per shipped ELF, the replaced and new functions and
    the number of unchanged ones.

    A changed source file that goes into no shipped binary (a test program, a test
    module, an object linked into nothing) is ignored with a note in the report.
    Objects of static libraries the package builds and links in (vendored code) are
    diffed like the others, for the binaries they are linked into.

PATCH REPORT
    At the end of the build, and when the change is refused, a report per patched
    executable or library is printed: the changed functions with why each is in the
    patch (code changed, inlining, compiler clone, cold part, read-only data), new
    functions, functions left out because only line numbers moved, warnings (changed
    constructors or main, which do not run again in running processes), notes, and for
    a refusal the function, the section and the reason. The patch RPM carries it as
    report.json next to patch.json; "syscare info" shows its summary.

    Output: patch-<target name>-<target version>-<target release>-NAME-V-R.<arch>.rpm,
    which requires the exact target package and syscare and installs into
    /usr/lib/syscare/patches/<uuid>/ (patch.json and the patch objects); and
    patch-...-NAME-V-R.src.rpm with the target's sources, its spec and the .patch files.
    Installing the patch RPM applies nothing; erasing it runs "syscare remove <uuid>"
    first and fails if that fails.

    %install runs with the compiler captured too, so links it makes (a program linked
    straight into the buildroot) count; each linked file is found among the installed
    files by content, or by build-id when %install stripped it, whatever name it is
    installed under. rpmbuild's own %files processing says which binary package ships
    each file: a fix whose changed files come from several binary packages of the
    source package (foo and foo-libs) gives one patch RPM per binary package, each
    requiring its exact target (patch-foo-..., patch-foo-libs-..., same NAME-V-R);
    "dnf hotpatch upgrade" installs them and applies them in one transaction.

    "syscare-build diff" prints how each section and symbol of PATCHED.o compares to
    ORIG.o (SAME, CHANGED, NEW) and with -o writes the patch object.

    The patch objects are self-contained: every function they replace and every symbol
    of the target they use is resolved from the debuginfo and recorded as an offset
    from the target's load base, so the patch applies on hosts without the -debuginfo
    package. "syscare-build resolve" does the same for a hand-written patch object
    (runtime/include/upatch.h), from the target's debug file.

KERNEL PATCHES
    With a kernel source RPM (named kernel* or linux*, its %prep yielding a tree with
    Makefile and Kconfig) and its kernel-debuginfo RPM (holding
    /usr/lib/debug/lib/modules/<release>/vmlinux), the build makes a livepatch module
    instead of patch objects. The tree is prepared once: %prep, the configuration (the
    tree's .config, else a config in the debuginfo package, else --kernel-config), then
    make olddefconfig modules_prepare with KERNELRELEASE set to <release> (the running
    kernel's uname -r). With --kernel-cache DIR the prepared tree is kept there and later
    builds of the same source RPM use a hard-linked copy of it.

    Only the C files the fix changes are compiled, by kbuild (make path/file.o) with
    -ffunction-sections -fdata-sections added, before and after the fix. The kernel's
    tables (ORC unwind data, ftrace call sites, return-thunk sites) are set aside before
    the diff. Refused, naming the function and section: a fix to assembly (.S), to
    __init code, one that changes the exported-symbol table, a changed struct layout or
    initialised data (as for user space), and for now a replaced function with entries
    in the exception table, alternatives, static keys or calls, BUG/WARN or paravirt
    tables; headers and Makefiles are refused as well (only named C files are rebuilt).

    The module has one klp_func per replaced function (old_sympos from the debuginfo's
    vmlinux for duplicate local names); exported kernel symbols it uses are resolved by
    the module loader with the CRCs read from the vmlinux (modversions), the others
    through .klp.rela.vmlinux.* relocations that livepatch resolves. Its vermagic is
    checked against the vmlinux's. A C file built into an in-tree module (kbuild
    compiles it with -DMODULE) gets a klp_object named after the module; its symbols
    are placed with the module's debug file from the debuginfo RPM
    (lib/modules/<release>/.../<module>.ko[.debug]) and reached through
    .klp.rela.<module>.* relocations, applied when the module loads. The patch RPM
    (kind "kernel") requires kernel = EVR and installs the .ko and patch.json;
    "syscare apply" loads it. An out-of-tree module comes as a second --source: its
    %prep yields the module's directory (with its Makefile or Kbuild), which is built
    against the prepared tree (make M=DIR modules) before and after the fix; its
    symbols are placed with the module built from the original sources, and the patch
    RPM then requires the module's package.

OPTIONS
    --patch-name NAME        patch name (HP001, CVE-2021-32675); required
    --patch-version V        patch version (default 1)
    --patch-release R        patch release (default 1)
    --patch-description TEXT description of the patch RPM
    --source FILE            the target's source RPM; required. For a kernel patch, a
                             second --source is the source RPM of an out-of-tree
                             module the fix changes
    --debuginfo FILE         a -debuginfo RPM of the same version-release; repeat for
                             several; required
    --patch FILE             a fix in unified diff format, applied with patch -p1 (or
                             -p0) in the unpacked source tree; repeat for several, applied
                             in order; required
    --output DIR             where the RPMs go (default .)
    --jobs N                 parallel compile jobs (default: number of CPUs)
    --workdir DIR            where the work directory is made (default $TMPDIR or /tmp)
    --skip-cleanup           keep the work directory (its path is printed)
    --skip-compiler-check    build even if the debuginfo's DW_AT_producer names another
                             GCC version than the gcc on PATH
    --dry-run                stop after the report (and the link of the patch objects):
                             write no RPM; exit 0 when the patch would build, 3 or 4
                             as below when it would not
    --verbose                copy the full build log to standard error
    --json                   progress as JSON lines on standard output, one object per
                             event (start, progress with seconds and objects compiled,
                             done, failed, skipped) and a last "result" object with the
                             RPMs; the reports go to standard error
    --kernel-config FILE     the kernel configuration, when neither the kernel source
                             RPM's tree nor the debuginfo package has one
    --kernel-cache DIR       keep prepared kernel trees in DIR and reuse them
    -h, --help               show this text

STEPS
    prepare, build original, build patched, diff, cross-check, link, package: each is
    printed with its duration (package is skipped with --dry-run). On a terminal the
    running step is shown on a live line with its elapsed time and, while the package
    compiles, the number of objects compiled so far. The full log is
    build.log in the work directory; when the build fails its last lines and its path
    are printed (with the work directory removed, the log is kept in the output
    directory as a new file syscare-build-NAME-<time>.log, or alone in the work
    directory if it cannot be written there).

EXIT STATUS
    0   the patch RPMs were written (with --dry-run: the patch would build)
    1   any other error: bad or mismatched input file (corrupt or non-RPM file, debuginfo
        of another version-release), a patch that does not apply, a missing tool, a
        compiler mismatch, a failing package build, a kernel source RPM, a shipped
        binary that differs beyond the patch (cross-check), or one that could not be
        cross-checked when nothing else changed; for a kernel: no usable
        configuration, a debuginfo RPM of another kernel build
    2   bad command line
    3   no functional change: the fix changes no function of a shipped binary, and
        the cross-check found every shipped binary the same
    4   the change cannot be hot patched; the message names the function, the section
        and the reason

REQUIREMENTS
    rpmbuild, rpm2cpio, cpio, patch, gcc (the version that built the package), ld,
    objcopy. The compiler binding needs root (mount namespaces); without it only PATH
    and CC/CXX are covered. Kernel patches also need make, flex, bison, bc and the
    kernel's build dependencies (libelf-dev, libssl-dev, dwarves).

EXAMPLE
    syscare-build --patch-name HP001 --source redis-6.2.5-1.src.rpm \
        --debuginfo redis-debuginfo-6.2.5-1.x86_64.rpm --patch 0001-fix.patch --output out/
    syscare-build --patch-name HP002 --source kernel-6.1.172-1.src.rpm \
        --debuginfo kernel-debuginfo-6.1.172-1.x86_64.rpm --patch 0001-loadavg.patch \
        --kernel-cache /var/cache/syscare-build --output out/
`

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "diff" {
		return diff.RunDiff(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "resolve" {
		return runResolve(ctx, args[1:], stdout)
	}
	fs := flag.NewFlagSet("syscare-build", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o builder.Options
	var debuginfo, patches, sources multi
	fs.StringVar(&o.PatchName, "patch-name", "", "")
	fs.StringVar(&o.PatchVersion, "patch-version", "1", "")
	fs.StringVar(&o.PatchRelease, "patch-release", "1", "")
	fs.StringVar(&o.Description, "patch-description", "", "")
	fs.Var(&sources, "source", "")
	fs.Var(&debuginfo, "debuginfo", "")
	fs.Var(&patches, "patch", "")
	fs.StringVar(&o.OutputDir, "output", ".", "")
	fs.IntVar(&o.Jobs, "jobs", 0, "")
	fs.StringVar(&o.WorkDir, "workdir", "", "")
	fs.BoolVar(&o.SkipCleanup, "skip-cleanup", false, "")
	fs.BoolVar(&o.SkipCompilerCheck, "skip-compiler-check", false, "")
	fs.BoolVar(&o.Verbose, "verbose", false, "")
	fs.BoolVar(&o.DryRun, "dry-run", false, "")
	fs.StringVar(&o.KernelConfig, "kernel-config", "", "")
	fs.StringVar(&o.KernelCache, "kernel-cache", "", "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			io.WriteString(stdout, usage)
			return nil
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	o.Debuginfo, o.Patches = debuginfo, patches
	if len(sources) > 0 {
		o.Source, o.ModuleSources = sources[0], sources[1:]
	}
	var missing []string
	for flag, v := range map[string]bool{"--patch-name": o.PatchName != "", "--source": o.Source != "",
		"--debuginfo": len(o.Debuginfo) > 0, "--patch": len(o.Patches) > 0} {
		if !v {
			missing = append(missing, flag)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return usageError{fmt.Errorf("missing %s", strings.Join(missing, ", "))}
	}
	if o.Jobs < 0 {
		return usageError{fmt.Errorf("--jobs %d: want a positive number", o.Jobs)}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Wrapper = self
	o.Progress = stdout
	var events *jsonEvents
	switch {
	case *asJSON:
		// stdout carries only JSON lines; the reports go to stderr.
		events = newJSONEvents(stdout)
		o.Progress, o.Events = io.Discard, events.event
		stdout = stderr
	case termline.IsTerminal(stdout):
		live := liveLine{w: stdout, line: termline.New(stdout)}
		o.Progress, o.Events = live, live.event
	}
	res, err := builder.Build(ctx, o)
	if events != nil {
		r := result{OK: err == nil}
		if err != nil {
			r.Error = err.Error()
			var f *builder.Failure
			if errors.As(err, &f) {
				r.Log = f.LogPath
			}
		} else {
			r.DryRun, r.RPMs, r.SRPMs = res.DryRun, res.RPMs, res.SRPMs
		}
		defer events.result(r)
	}
	if err != nil {
		var f *builder.Failure
		if errors.As(err, &f) {
			printReports(stdout, f.Reports)
			printBinaries(stdout, f.Binaries)
			fmt.Fprintf(stderr, "syscare-build: %v\n", f.Err)
			if len(f.Tail) > 0 {
				fmt.Fprintf(stderr, "last lines of the log:\n    %s\n", strings.Join(f.Tail, "\n    "))
			}
			fmt.Fprintf(stderr, "full log: %s\n", f.LogPath)
		}
		return err
	}
	printReports(stdout, res.Reports)
	printBinaries(stdout, res.Binaries)
	if res.DryRun {
		fmt.Fprintln(stdout, "dry run: the patch would build; no RPM written")
	} else {
		for i := range res.RPMs {
			fmt.Fprintf(stdout, "patch RPM:  %s\nsource RPM: %s\n", res.RPMs[i], res.SRPMs[i])
		}
	}
	if res.WorkDir != "" {
		fmt.Fprintf(stdout, "work directory: %s\n", res.WorkDir)
	}
	return nil
}

func printReports(w io.Writer, reports []*diff.Report) {
	for _, rp := range reports {
		fmt.Fprint(w, "\n"+rp.Text())
	}
	if len(reports) > 0 {
		fmt.Fprintln(w)
	}
}

// printBinaries lists, per shipped ELF, what the patch replaces and adds there and how
// many functions the cross-check found unchanged.
func printBinaries(w io.Writer, bins []builder.BinaryStatus) {
	if len(bins) == 0 {
		return
	}
	fmt.Fprintln(w, "Shipped binaries:")
	for _, b := range bins {
		fmt.Fprintf(w, "  %s\n", b.Line())
	}
	fmt.Fprintln(w)
}

func exitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errors.Is(err, diff.ErrNoChange):
		return exitNoChange
	case errors.As(err, new(*diff.UnpatchableError)):
		return exitUnpatchable
	}
	return exitError
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == capture.NSExecArg {
		err := capture.ExecInNamespace(os.Args[2:])
		fmt.Fprintf(os.Stderr, "syscare-build: %v\n", err)
		os.Exit(exitError)
	}
	if capture.IsWrapperCall(os.Args[0]) {
		os.Exit(capture.RunWrapper(os.Args))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var u usageError
	var f *builder.Failure
	switch {
	case errors.As(err, &u):
		fmt.Fprintf(os.Stderr, "syscare-build: %v\nRun syscare-build --help for the options.\n", u.error)
	case err != nil && !errors.As(err, &f):
		fmt.Fprintf(os.Stderr, "syscare-build: %v\n", err)
	}
	os.Exit(exitCode(err))
}
