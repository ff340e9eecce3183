// Command upatch-manage applies, removes and lists user-space hot patches in running
// processes: the low-level tool under syscare-helper, usable on its own.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/upatch"
	"golang.org/x/sys/unix"
)

const usage = `Usage:
  upatch-manage patch   --pid PID[,PID...] | --all  --patch FILE [--binary PATH] [--uuid UUID] [--force] [--timeout D] [--retries N] [--debug-root DIR] [--json]
  upatch-manage unpatch --pid PID[,PID...] | --all  --uuid UUID [--binary PATH] [--timeout D] [--retries N] [--keep-shadow] [--json]
  upatch-manage info    --pid PID [--json]

Apply a user-space hot patch to running processes, remove it, or list the patches a
process holds. A patch is an ELF relocatable object in the SysCare patch-object format
(see runtime/include/upatch.h).

patch     stops every thread of the process, checks the target's build-id, maps the
          patch near the target ELF, checks that no thread is running (or will return
          into) a replaced function, writes a jump at each replaced function, records a
          header inside the process and lets it continue. All functions switch together.
unpatch   removes the patch UUID: the same safety check against the new code, the
          original bytes restored, the memory unmapped. Patches of the same function
          come off last in, first out.
info      lists the patches present in the process, read from the process itself.

Options:
  --pid PID[,PID...]  the target processes
  --all               every process that maps --binary (required with --all); the
                      processes are listed again after each batch, so workers forked
                      meanwhile are caught; a process that exits before its turn is
                      skipped, and unpatch skips processes that never held the patch
  --patch FILE        the patch object
  --binary PATH       the mapped ELF to patch: a shared library or executable path as it
                      appears in /proc/PID/maps (default: the main executable)
  --uuid UUID         the patch's identifier in the process (default: a new random UUID,
                      printed on success)
  --force             patch even though the object records no target build-id
  --timeout D         how long to wait for a thread busy in a replaced function (or,
                      for unpatch, in the patch) to return from it, while the process
                      runs; the patch goes in as soon as no thread is busy (default 5s,
                      0 for no waiting). SIGINT or SIGTERM ends a wait at once and
                      leaves the process as it was
  --retries N         tries when a busy thread cannot be waited for (default 3)
  --keep-shadow       (unpatch) leave the shadow variables (upatch.h) of the last patch
                      that uses them in the process, for the cumulative patch applied
                      next to adopt, so that its data survives the replacement
  --debug-root DIR    look for the target's separate debuginfo (by build-id) under
                      DIR/usr/lib/debug instead of /usr/lib/debug
  --json              machine-readable output: info's patches, or for patch and unpatch
                      one object per process (pid, uuid, ok, error, freeze_us, tries);
                      the exit status is the same as without it. patch and unpatch
                      also write progress to stderr, instead of the live terminal
                      line: one JSON object per line as each process is done,
                      {"event":"process","op":"patch","pid":N,"ok":true,
                      "error":"...","freeze_us":N,"done":N,"total":N}, where done
                      of total counts the whole run (a rescan of --all raises
                      total); warnings and errors stay plain text lines there,
                      which never begin with "{"

Exit status:
  0 success; 1 error; 2 usage; 3 a function is busy (retry later); 4 build-id mismatch
  or no build-id; 5 the patch is already applied, not applied, or another patch is
  stacked on top; 6 the process exited.
`

// Exit codes, documented in the usage text.
const (
	exitError   = 1
	exitUsage   = 2
	exitBusy    = 3
	exitBuildID = 4
	exitState   = 5
	exitGone    = 6
)

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	// The process being patched must never be left half done because this tool was
	// interrupted: hold SIGINT/SIGTERM/SIGHUP until the operation is over. A signal
	// ends a wait for busy threads at once (the engine leaves the process as it was).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	var got os.Signal
	done := make(chan struct{})
	go func() {
		defer close(done)
		got = <-sigs
		cancel()
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	code := exitCode(err)
	if err != nil {
		fmt.Fprintf(os.Stderr, "upatch-manage: %v\n", err)
		if errors.As(err, new(usageError)) {
			fmt.Fprint(os.Stderr, "Run 'upatch-manage --help' for usage.\n")
		}
		if hint := permissionHint(err, os.Geteuid()); hint != "" {
			fmt.Fprintf(os.Stderr, "upatch-manage: %s\n", hint)
		}
	}
	if ctx.Err() != nil {
		<-done
		fmt.Fprintf(os.Stderr, "upatch-manage: interrupted by %v\n", got)
		if code == 0 || errors.Is(err, ptrace.ErrCanceled) {
			code = 128 + int(got.(syscall.Signal))
		}
	}
	os.Exit(code)
}

// permissionHint says why a process could not be read when the cause is likely
// the caller: patching needs root (ptrace and other users' /proc files).
func permissionHint(err error, euid int) string {
	if euid != 0 && errors.Is(err, os.ErrPermission) {
		return "hint: reading and patching other processes needs root"
	}
	return ""
}

func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.As(err, new(usageError)):
		return exitUsage
	case errors.Is(err, upatch.ErrBusy):
		return exitBusy
	case errors.Is(err, upatch.ErrBuildID):
		return exitBuildID
	case errors.Is(err, upatch.ErrAlreadyApplied), errors.Is(err, upatch.ErrNotApplied), errors.Is(err, upatch.ErrStacked):
		return exitState
	case errors.Is(err, ptrace.ErrExited):
		return exitGone
	}
	return exitError
}

type options struct {
	pids    []int
	all     bool
	patch   string
	binary  string
	uuid    string
	force   bool
	retries int
	timeout time.Duration
	json    bool
	debug   string
	keep    bool
}

func parse(cmd string, args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o := &options{}
	pids := fs.String("pid", "", "")
	fs.BoolVar(&o.all, "all", false, "")
	fs.StringVar(&o.patch, "patch", "", "")
	fs.StringVar(&o.binary, "binary", "", "")
	fs.StringVar(&o.uuid, "uuid", "", "")
	fs.BoolVar(&o.force, "force", false, "")
	fs.IntVar(&o.retries, "retries", 3, "")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "")
	fs.BoolVar(&o.json, "json", false, "")
	fs.BoolVar(&o.keep, "keep-shadow", false, "")
	fs.StringVar(&o.debug, "debug-root", "/", "")
	if err := fs.Parse(args); err != nil {
		return nil, usageError{fmt.Sprintf("%s: %v", cmd, err)}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Sprintf("%s: unexpected argument %q", cmd, fs.Arg(0))}
	}
	if *pids != "" {
		for _, s := range strings.Split(*pids, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || pid <= 0 {
				return nil, usageError{fmt.Sprintf("%s: --pid %q is not a process id", cmd, s)}
			}
			o.pids = append(o.pids, pid)
		}
	}
	if o.timeout < 0 {
		return nil, usageError{fmt.Sprintf("%s: --timeout must not be negative", cmd)}
	}
	if o.retries < 1 {
		return nil, usageError{fmt.Sprintf("%s: --retries must be at least 1", cmd)}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command given"}
	}
	cmd := args[0]
	switch cmd {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "patch", "unpatch", "info":
	default:
		return usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
	for _, a := range args[1:] {
		if a == "-h" || a == "--help" {
			fmt.Fprint(stdout, usage)
			return nil
		}
	}
	o, err := parse(cmd, args[1:], stderr)
	if err != nil {
		return err
	}
	if o.all {
		if o.binary == "" {
			return usageError{cmd + ": --all needs --binary"}
		}
		if len(o.pids) > 0 {
			return usageError{cmd + ": --all and --pid exclude each other"}
		}
		pids, err := upatch.Processes(o.binary)
		if err != nil {
			return fmt.Errorf("find processes mapping %s: %w", o.binary, err)
		}
		if len(pids) == 0 {
			return fmt.Errorf("no process maps %s", o.binary)
		}
	}
	if len(o.pids) == 0 && !o.all {
		return usageError{cmd + ": --pid or --all is required"}
	}
	eng := upatch.NewEngine(o.debug)
	warn := func(s string) { fmt.Fprintf(stderr, "upatch-manage: warning: %s\n", s) }
	opts := upatch.Options{Binary: o.binary, UUID: o.uuid, Force: o.force, Retries: o.retries, Warn: warn,
		Timeout: o.timeout, Cancel: ctx.Done(), KeepShadow: o.keep}
	if o.json && cmd != "info" {
		// For tools: an event per process on stderr; a live line would garble it there.
		opts.Progress = newJSONProgress(stderr, cmd).update
	} else if live := newProgressLine(stderr, cmd); live != nil && cmd != "info" {
		// On a terminal: processes done of the batch, on a line of stderr redrawn in place.
		opts.Progress = live.update
		opts.Warn = func(s string) { live.line.Do(func() { warn(s) }) }
		defer live.line.Clear()
	}
	switch cmd {
	case "patch":
		if o.patch == "" {
			return usageError{"patch: --patch is required"}
		}
		if len(o.pids) > 0 {
			// The target's files are read while the object is parsed.
			eng.Prefetch(o.pids[0], opts)
		}
		obj, err := loadObject(o.patch)
		if err != nil {
			return err
		}
		if opts.UUID == "" {
			if opts.UUID, err = newUUID(); err != nil {
				return err
			}
		}
		if !o.all {
			return report(stdout, eng.PatchAll(o.pids, obj, opts), "patched", opts.UUID, len(obj.Funcs), o.json)
		}
		// PatchBinary lists the processes again after each batch, so a worker forked
		// meanwhile from a process not yet patched does not keep the old code.
		res, err := eng.PatchBinary(o.binary, obj, opts)
		if err != nil {
			return err
		}
		res, err = skipGone(stderr, res, nil, opts.UUID, o.binary)
		if err != nil {
			return err
		}
		return report(stdout, res, "patched", opts.UUID, len(obj.Funcs), o.json)
	case "unpatch":
		if o.uuid == "" {
			return usageError{"unpatch: --uuid is required"}
		}
		if !o.all {
			return report(stdout, eng.UnpatchAll(o.pids, o.uuid, opts), "unpatched", o.uuid, 0, o.json)
		}
		res, err := eng.UnpatchBinary(o.binary, o.uuid, opts)
		if err != nil {
			return err
		}
		res, err = skipGone(stderr, res, upatch.ErrNotApplied, o.uuid, o.binary)
		if err != nil {
			return err
		}
		return report(stdout, res, "unpatched", o.uuid, 0, o.json)
	default:
		if len(o.pids) != 1 {
			return usageError{"info: give exactly one --pid"}
		}
		return info(stdout, eng, o.pids[0], o.json)
	}
}

// loadObject reads the patch object whole, in one read: the parse takes every
// section's data anyway, and would otherwise read the headers, the symbol table
// (twice) and each small section with a system call of its own.
func loadObject(path string) (*patchobj.Object, error) {
	// Only a regular file: a FIFO or a device (/dev/zero) would block or read forever.
	// O_NONBLOCK keeps the open itself from waiting for a FIFO's writer; it changes
	// nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, st.Mode().Type())
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	obj, err := patchobj.ParseBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return obj, nil
}

// report prints one line per process and returns the first failure (the others
// are printed too, so that a batch names every process that failed).
func report(stdout io.Writer, res []upatch.Result, verb, uuid string, nfuncs int, asJSON bool) error {
	var failed []error
	type row struct {
		Pid      int    `json:"pid"`
		UUID     string `json:"uuid"`
		OK       bool   `json:"ok"`
		Error    string `json:"error,omitempty"`
		FreezeUS int64  `json:"freeze_us"`
		Tries    int    `json:"tries"`
	}
	var rows []row
	for _, r := range res {
		rows = append(rows, row{Pid: r.Pid, UUID: uuid, OK: r.Err == nil, FreezeUS: r.Stats.Freeze.Microseconds(), Tries: r.Stats.Tries})
		if r.Err != nil {
			failed = append(failed, withPid(r.Pid, r.Err))
			rows[len(rows)-1].Error = failed[len(failed)-1].Error()
			continue
		}
		if asJSON {
			continue
		}
		if nfuncs > 0 {
			fmt.Fprintf(stdout, "pid %d: %s %s (%d functions, frozen %v)\n", r.Pid, verb, uuid, nfuncs, r.Stats.Freeze.Round(time.Microsecond))
		} else {
			fmt.Fprintf(stdout, "pid %d: %s %s (frozen %v)\n", r.Pid, verb, uuid, r.Stats.Freeze.Round(time.Microsecond))
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return err
		}
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return failed[0]
	}
	for _, e := range failed[1:] {
		fmt.Fprintf(os.Stderr, "upatch-manage: %v\n", e)
	}
	return fmt.Errorf("%d of %d processes failed; first: %w", len(failed), len(res), failed[0])
}

// skipGone drops, from the results of an --all run, the processes that exited
// before their turn (they run no old code any more) and, for unpatch, those that
// never held the patch (started after it was applied elsewhere, say). It fails when
// nothing is left that the command changed.
func skipGone(stderr io.Writer, res []upatch.Result, notHeld error, uuid, binary string) ([]upatch.Result, error) {
	var kept []upatch.Result
	notHeldCount := 0
	for _, r := range res {
		switch {
		case errors.Is(r.Err, ptrace.ErrExited):
			fmt.Fprintf(stderr, "upatch-manage: pid %d exited before its turn; skipped\n", r.Pid)
		case notHeld != nil && errors.Is(r.Err, notHeld):
			notHeldCount++
		default:
			kept = append(kept, r)
		}
	}
	if len(kept) == 0 {
		if notHeldCount > 0 {
			return nil, fmt.Errorf("%w: %s is in no process that maps %s", upatch.ErrNotApplied, uuid, binary)
		}
		return nil, fmt.Errorf("%w: every process that mapped %s exited", ptrace.ErrExited, binary)
	}
	return kept, nil
}

// withPid names the process in err unless the engine already did.
func withPid(pid int, err error) error {
	if strings.HasPrefix(err.Error(), fmt.Sprintf("pid %d:", pid)) {
		return err
	}
	return fmt.Errorf("pid %d: %w", pid, err)
}

func info(stdout io.Writer, eng *upatch.Engine, pid int, asJSON bool) error {
	applied, err := eng.Info(pid)
	if err != nil {
		return withPid(pid, err)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Pid     int              `json:"pid"`
			Patches []upatch.Applied `json:"patches"`
		}{pid, applied})
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "pid %d: no patches\n", pid)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UUID\tSEQ\tTARGET\tFUNCTION\tOLD\tNEW")
	for _, a := range applied {
		for _, f := range a.Funcs {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%#x\t%#x\n", a.UUID, a.Seq, a.Target, f.Name, f.Old, f.New)
		}
	}
	return tw.Flush()
}

// newUUID returns a random (version 4) UUID. The bytes come from getrandom(2)
// rather than crypto/rand, whose package initialisation (its FIPS self-contained
// generators) costs the tool about half a millisecond at every start.
func newUUID() (string, error) {
	var b [16]byte
	for n := 0; n < len(b); {
		m, err := unix.Getrandom(b[n:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("random patch uuid: %w", err)
		}
		n += m
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}
