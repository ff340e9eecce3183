package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/internal/termline"
)

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

// errReported means the failure was already printed.
var errReported = errors.New("failed")

// exitStatus is a failure already printed by a child program whose exit status
// syscare passes on (syscare-build's 3 and 4 mean something to scripts).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

const usage = `usage: syscare [--bus ADDR] [--json] COMMAND [-f|--force] [ID...]

Commands (ID: entity or patch UUID, entity name, TARGET-NVR/PATCH[-VER-REL], or patch RPM name):
  list                 every installed patch entity and its status
  status ID...         status of patches
  info ID...           patch details, with the build report's summary per entity
  target ID...         target package of patches
  apply ID...          NOT-APPLIED -> ACTIVED (ACCEPTED with --accept; health gate below)
  active ID...         DEACTIVED -> ACTIVED
  deactive ID...       ACTIVED/ACCEPTED -> DEACTIVED
  remove ID...         any state -> NOT-APPLIED
  accept ID...         ACTIVED -> ACCEPTED (kept across reboots)
  upgrade [--accept] [HEALTH GATE] ID...
                       the patches ID names replace the other patches of their targets,
                       as one transaction: those go to NOT-APPLIED, these to ACTIVED
                       (ACCEPTED with --accept); on failure nothing is left changed
  upgrade --policy ID...
                       the same under /etc/syscare/upgrade.conf (its window, accept and
                       health gate), as the upgrade timer runs it
  history              the last upgrade runs (timer, dnf hotpatch, syscare upgrade)
  check ID...          verify target package, build-id and patch files
  processes ID         per-process status of a user patch, with each process's mount
                       namespace and container
  save                 record every patch state
  restore [--accepted] replay the recorded states
  rescan               re-read the patch directories
  reboot [--no-kexec] [--dry-run] ...
                       restart the system (kexec where possible); ACCEPTED patches come
                       back at boot (syscare reboot --help)
  build ARGS...        build a patch RPM (runs syscare-build)
  repo ARGS...         hot-patch repositories

Options:
  --bus ADDR   system (default, or DBUS_SYSTEM_BUS_ADDRESS), session, or a D-Bus address
  --json       machine-readable output
  -f, --force  apply/activate over a conflicting patch
  --accept     upgrade, apply: accept the patches too
  --progress   apply, active, deactive, remove, upgrade, restore: print a line to
               stderr each time the helper reports processes done while a user patch
               goes into or out of them ("activate NAME: 3 of 40 processes", at most
               every 100 ms); on a terminal that count is always shown, on one line
               redrawn in place and cleared at the end

Health gate (apply, upgrade): after activation the helper runs each check over the soak;
all healthy -> ACCEPTED (with --accept) or ACTIVED; one failure -> everything the command
changed is put back, and the error names the check, why it failed and its output.
  --health CMD         a check command (repeatable); run without a shell (quotes group
                       words, nothing is expanded: use sh -c '...' for a pipeline), with
                       a clean environment, as the calling user, output kept up to 4 KiB
  --soak D             how long the checks keep running (e.g. 30s; default 0: once)
  --interval D         time between two runs of the checks (default 5s)
  --check-timeout D    a check running longer is killed and fails (default 10s)
`

type options struct {
	bus      string
	json     bool
	force    bool
	accepted bool
	accept   bool
	cmd      string
	args     []string
	gate     gateFlags
	policy   bool
	progress bool
}

// gateFlags are the health gate's options of apply and upgrade.
type gateFlags struct {
	health                       []string
	soak, interval, checkTimeout time.Duration
	set                          bool
}

func parse(args []string) (options, error) {
	var o options
	for i := 0; i < len(args); i++ {
		a := args[i]
		if o.cmd == "build" || o.cmd == "repo" || o.cmd == "reboot" {
			o.args = append(o.args, args[i:]...)
			break
		}
		switch {
		case a == "--":
			o.args = append(o.args, args[i+1:]...)
			i = len(args)
		case a == "-f" || a == "--force":
			o.force = true
		case a == "--json":
			o.json = true
		case a == "--accepted" || a == "--accepted-only":
			o.accepted = true
		case a == "--accept":
			o.accept = true
		case a == "--policy":
			o.policy = true
		case a == "--progress":
			o.progress = true
		case a == "--health" || a == "--soak" || a == "--interval" || a == "--check-timeout" ||
			strings.HasPrefix(a, "--health=") || strings.HasPrefix(a, "--soak=") ||
			strings.HasPrefix(a, "--interval=") || strings.HasPrefix(a, "--check-timeout="):
			name, val, has := strings.Cut(a, "=")
			if !has {
				if i+1 >= len(args) {
					return o, usageError{name + " needs a value"}
				}
				i++
				val = args[i]
			}
			if err := o.gate.add(name, val); err != nil {
				return o, err
			}
		case a == "--bus":
			if i+1 >= len(args) {
				return o, usageError{"--bus needs a value"}
			}
			i++
			o.bus = args[i]
		case strings.HasPrefix(a, "--bus="):
			o.bus = strings.TrimPrefix(a, "--bus=")
		case a == "-h" || a == "--help" || a == "help":
			o.cmd = "help"
		case strings.HasPrefix(a, "-") && a != "-":
			return o, usageError{fmt.Sprintf("unknown option %s", a)}
		case o.cmd == "":
			o.cmd = a
		default:
			o.args = append(o.args, a)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	switch o.cmd {
	case "", "help":
		fmt.Fprint(stdout, usage)
		if o.cmd == "" {
			return usageError{"no command given"}
		}
		return nil
	case "build":
		return runBuild(ctx, o.args, stdout, stderr)
	case "repo":
		return runRepo(ctx, o.args, stdout, stderr)
	case "reboot":
		return runReboot(ctx, o.bus, o.args, stdout, stderr)
	}
	needIDs := map[string]bool{"status": true, "info": true, "target": true, "apply": true, "active": true,
		"deactive": true, "remove": true, "accept": true, "check": true, "processes": true, "upgrade": true}
	noIDs := map[string]bool{"list": true, "save": true, "restore": true, "rescan": true, "history": true}
	switch {
	case needIDs[o.cmd] && len(o.args) == 0:
		return usageError{fmt.Sprintf("%s needs at least one patch identifier", o.cmd)}
	case noIDs[o.cmd] && len(o.args) > 0:
		return usageError{fmt.Sprintf("%s takes no patch identifier", o.cmd)}
	case !needIDs[o.cmd] && !noIDs[o.cmd]:
		return usageError{fmt.Sprintf("unknown command %q (syscare help lists them)", o.cmd)}
	case o.cmd == "processes" && len(o.args) != 1:
		return usageError{"processes takes one patch identifier"}
	case o.accept && o.cmd != "upgrade" && o.cmd != "apply":
		return usageError{"--accept is an option of upgrade and apply (accept ID... accepts patches)"}
	case o.gate.set && o.cmd != "upgrade" && o.cmd != "apply":
		return usageError{"--health, --soak, --interval and --check-timeout are options of apply and upgrade"}
	case o.policy && o.cmd != "upgrade":
		return usageError{"--policy is an option of upgrade"}
	case o.policy && (o.accept || o.gate.set):
		return usageError{"--policy takes accept and the health gate from /etc/syscare/upgrade.conf: give neither"}
	case o.gate.set && len(o.gate.health) == 0:
		return usageError{"--soak, --interval and --check-timeout need --health"}
	case o.progress && !changesProcesses[o.cmd]:
		return usageError{"--progress is an option of apply, active, deactive, remove, upgrade and restore"}
	}

	c, err := syscarebus.Connect(o.bus)
	if err != nil {
		return err
	}
	defer c.Close()
	if live := termline.IsTerminal(stderr); changesProcesses[o.cmd] && (live || o.progress) {
		// The results wait until the live line is gone, so that they never share it.
		var out bytes.Buffer
		end := showProgress(c, stderr, live)
		err = dispatch(ctx, c, o, &out, stderr)
		end()
		stdout.Write(out.Bytes())
	} else {
		err = dispatch(ctx, c, o, stdout, stderr)
	}
	if err != nil && syscarebus.ErrorName(err) != "" {
		return errors.New(syscarebus.ErrorMessage(err))
	}
	return err
}

func dispatch(ctx context.Context, c *syscarebus.Client, o options, stdout, stderr io.Writer) error {
	switch o.cmd {
	case "list":
		es, err := c.List(ctx)
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(stdout, es)
		}
		printList(stdout, stderr, es)
		return nil
	case "status":
		ss, err := c.Status(ctx, o.args)
		if err != nil {
			return err
		}
		return printStates(stdout, o, ss)
	case "info":
		js, err := c.Info(ctx, o.args)
		if err != nil {
			return err
		}
		if o.json {
			return printRawJSON(stdout, js)
		}
		return printInfo(stdout, js)
	case "target":
		js, err := c.Target(ctx, o.args)
		if err != nil {
			return err
		}
		if o.json {
			return printRawJSON(stdout, js)
		}
		return printTarget(stdout, js)
	case "apply", "upgrade":
		if o.cmd == "apply" && !o.accept && !o.gate.set {
			break // the plain transition below
		}
		req := syscarebus.UpgradeRequest{Accept: o.accept, Force: o.force, NoSupersede: o.cmd == "apply", Policy: o.policy,
			Health: o.gate.health, Soak: o.gate.soak, Interval: o.gate.interval, CheckTimeout: o.gate.checkTimeout}
		us, err := c.UpgradeWith(ctx, o.args, req)
		if err != nil {
			return err
		}
		return printUpgrade(stdout, o, us)
	}
	switch o.cmd {
	case "apply", "active", "deactive", "remove", "accept", "check":
		method := strings.ToUpper(o.cmd[:1]) + o.cmd[1:]
		ss, err := c.Transition(ctx, method, o.args, o.force)
		if err != nil {
			return err
		}
		return printStates(stdout, o, ss)
	case "processes":
		ps, err := c.ProcessStatus(ctx, o.args[0])
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(stdout, ps)
		}
		for _, p := range ps {
			fmt.Fprintln(stdout, processLine(p))
		}
		return nil
	case "save":
		return c.Save(ctx)
	case "restore":
		ss, err := c.Restore(ctx, o.accepted)
		if err != nil {
			return err
		}
		return printStates(stdout, o, ss)
	case "rescan":
		return c.Rescan(ctx)
	case "history":
		rs, err := c.History(ctx)
		if err != nil {
			return err
		}
		if o.json {
			if rs == nil {
				rs = []syscarebus.Record{}
			}
			return printJSON(stdout, rs)
		}
		for _, r := range rs {
			fmt.Fprintf(stdout, "%s  %-8s %-8s %s\n", r.Time.Format(time.RFC3339), r.Source, r.Result, r.Summary)
		}
		return nil
	}
	return usageError{"unknown command " + o.cmd}
}

// printUpgrade prints what an upgrade did, one line per entity.
func printUpgrade(w io.Writer, o options, us []syscarebus.UpgradeEntry) error {
	if o.json {
		if us == nil {
			us = []syscarebus.UpgradeEntry{}
		}
		return printJSON(w, us)
	}
	for _, u := range us {
		line := fmt.Sprintf("%s: %s (%s)", u.Name, u.Status, strings.ToLower(u.Action))
		if u.Detail != "" {
			line += ": " + u.Detail
		}
		fmt.Fprintln(w, line)
	}
	return nil
}

// add records one health gate option.
func (g *gateFlags) add(name, val string) error {
	g.set = true
	if name == "--health" {
		if strings.TrimSpace(val) == "" {
			return usageError{"--health needs a command"}
		}
		g.health = append(g.health, val)
		return nil
	}
	d, err := parseDuration(val)
	if err != nil {
		return usageError{fmt.Sprintf("%s %q: %v", name, val, err)}
	}
	switch name {
	case "--soak":
		g.soak = d
	case "--interval":
		g.interval = d
	default:
		g.checkTimeout = d
	}
	return nil
}

// parseDuration reads a Go duration (30s, 2m, 500ms) or a number of seconds.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(s, 64); err == nil && n >= 0 {
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.New("want a duration such as 30s, 2m or 500ms")
	}
	return d, nil
}

// printRawJSON prints the helper's JSON reply indented like every other --json output.
func printRawJSON(w io.Writer, js string) error {
	var b bytes.Buffer
	if err := json.Indent(&b, []byte(js), "", "  "); err != nil {
		_, err := fmt.Fprintln(w, js)
		return err
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printStates(w io.Writer, o options, ss []syscarebus.EntityState) error {
	if o.json {
		if ss == nil {
			ss = []syscarebus.EntityState{}
		}
		return printJSON(w, ss)
	}
	for _, s := range ss {
		fmt.Fprintf(w, "%s: %s\n", s.Name, s.Status)
	}
	return nil
}

func printList(w, stderr io.Writer, es []syscarebus.ListEntry) {
	nameW := len("Name")
	for _, e := range es {
		nameW = max(nameW, len(e.Name))
	}
	fmt.Fprintf(w, "%-38s %-*s %s\n", "Uuid", nameW, "Name", "Status")
	for _, e := range es {
		fmt.Fprintf(w, "%-38s %-*s %s\n", e.UUID, nameW, e.Name, e.Status)
	}
	for _, e := range es {
		if e.Problem != "" {
			fmt.Fprintf(stderr, "syscare: warning: %s: %s\n", e.Name, e.Problem)
		}
	}
}

const frame = "----------------------------------------------------------------------"

func printInfo(w io.Writer, js string) error {
	var ps []syscarebus.PatchInfo
	if err := json.Unmarshal([]byte(js), &ps); err != nil {
		return fmt.Errorf("info reply: %w", err)
	}
	for _, p := range ps {
		kind := "UserPatch"
		if p.Kind == "kernel" {
			kind = "KernelPatch"
		}
		fmt.Fprintln(w, frame)
		kv := func(k, v string) { fmt.Fprintf(w, "%-12s %s\n", k+":", v) }
		kv("uuid", p.UUID)
		kv("name", p.Name)
		kv("version", p.Version)
		kv("release", p.Release)
		kv("arch", p.Arch)
		kv("type", kind)
		kv("target", p.Target.NEVRA())
		kv("rpm", p.RPMName)
		kv("license", p.Target.License)
		kv("directory", p.Dir)
		if p.Removed {
			kv("removed", "patch directory is gone while applied")
		}
		kv("description", p.Description)
		fmt.Fprintln(w, "entities:")
		for _, e := range p.Entities {
			fmt.Fprintf(w, "    * %s\n", e.Name)
			fmt.Fprintf(w, "      uuid: %s, status: %s, target: %s, build-id: %s\n", e.UUID, e.Status, e.TargetPath, e.BuildID)
			var fs []string
			for _, f := range e.Functions {
				fs = append(fs, f.Name)
			}
			fmt.Fprintf(w, "      functions: %s\n", strings.Join(fs, ", "))
			if e.ReportSummary != "" {
				fmt.Fprintf(w, "      report: %s\n", e.ReportSummary)
			}
		}
		fmt.Fprintln(w, "patch:")
		for _, s := range p.Sources {
			fmt.Fprintf(w, "    %s %s\n", s.File, s.SHA256[:min(len(s.SHA256), 16)])
		}
		if p.Report != "" {
			kv("report", filepath.Join(p.Dir, p.Report))
		}
	}
	fmt.Fprintln(w, frame)
	return nil
}

func printTarget(w io.Writer, js string) error {
	var ts []syscarebus.TargetInfo
	if err := json.Unmarshal([]byte(js), &ts); err != nil {
		return fmt.Errorf("target reply: %w", err)
	}
	for _, t := range ts {
		fmt.Fprintln(w, frame)
		kv := func(k, v string) { fmt.Fprintf(w, "%-9s %s\n", k+":", v) }
		kv("patch", t.Patch+" ("+t.UUID+")")
		kv("name", t.Target.Name)
		kv("epoch", fmt.Sprint(t.Target.Epoch))
		kv("version", t.Target.Version)
		kv("release", t.Target.Release)
		kv("arch", t.Target.Arch)
		kv("license", t.Target.License)
		kv("files", strings.Join(t.Files, ", "))
	}
	fmt.Fprintln(w, frame)
	return nil
}

// runBuild runs syscare-build, preferring the one next to this executable.
func runBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	bin := "syscare-build"
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), bin); fileExists(p) {
			bin = p
		}
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return exitStatus(ee.ExitCode())
		}
		return fmt.Errorf("run %s: %w", bin, err)
	}
	return nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// processLine is one process of `syscare processes`: pid, status, where it runs (its
// mount namespace as `readlink /proc/PID/ns/mnt` prints it, and its container when its
// cgroup names one, shortened as container tools show ids), and the detail.
func processLine(p syscarebus.ProcessState) string {
	line := fmt.Sprintf("%d: %s", p.Pid, p.Status)
	if p.MountNS != 0 {
		line += fmt.Sprintf(" mnt:[%d]", p.MountNS)
	}
	if p.Container != "" {
		line += " container " + p.Container[:min(12, len(p.Container))]
	}
	if p.Detail != "" {
		line += " (" + p.Detail + ")"
	}
	return line
}
