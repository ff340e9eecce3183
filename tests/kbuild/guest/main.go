// Command guest runs inside the qemu guest of tests/kbuild: for each livepatch module
// in its directory (named after the /proc file the patch changes: NAME--CASE.ko
// patches /proc/NAME; "binfmt" stands for /proc/sys/fs/binfmt_misc/status) it reads the file, loads the module with runtime/kpatch, reads it again,
// disables and unloads the patch and reads it a third time, printing one
// "KPTEST {json}" line per step for the host test to assert on. Plain modules named
// prereq--NAME.ko are loaded first (binfmt_misc is then mounted).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/runtime/kpatch"
	"github.com/syscare/syscare/runtime/patchmeta"
	"golang.org/x/sys/unix"
)

// Step is one result line; the host decodes the same fields.
type Step struct {
	Module string `json:"module"`
	Step   string `json:"step"`
	Err    string `json:"err,omitempty"`
	Text   string `json:"text"`
}

func report(module, step string, err error, text string) {
	s := Step{Module: module, Step: step, Text: text}
	if err != nil {
		s.Err = err.Error()
	}
	b, _ := json.Marshal(s)
	fmt.Printf("KPTEST %s\n", b)
}

func read(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(b))
}

// loadPlain loads a module that is not a livepatch.
func loadPlain(ko string) error {
	f, err := os.Open(ko)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

func main() {
	dir := os.Args[1]
	prereqs, _ := filepath.Glob(filepath.Join(dir, "prereq--*.ko"))
	for _, ko := range prereqs {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(ko), "prereq--"), ".ko")
		err := loadPlain(ko)
		if err == nil && name == "binfmt_misc" {
			err = unix.Mount("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc", 0, "")
		}
		report(name, "prereq", err, read("/proc/modules"))
	}
	var mods []string
	all, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	for _, ko := range all {
		if !strings.HasPrefix(filepath.Base(ko), "prereq--") {
			mods = append(mods, ko)
		}
	}
	sort.Strings(mods)
	ctx := context.Background()
	p := kpatch.New()
	p.Timeout = 60 * time.Second
	rel, err := p.KernelRelease()
	report("", "release", err, rel)
	for _, ko := range mods {
		base := strings.TrimSuffix(filepath.Base(ko), ".ko")
		proc, _, _ := strings.Cut(base, "--")
		file := "/proc/" + proc
		if proc == "binfmt" {
			file = "/proc/sys/fs/binfmt_misc/status"
		}
		report(base, "before", nil, read(file))
		mi, err := p.Load(ctx, ko)
		report(base, "load", err, read(file))
		if err != nil {
			continue
		}
		st, err := p.Status(mi.Name)
		report(base, "state", err, st.State.String())
		err = p.Disable(ctx, mi.Name)
		report(base, "disable", err, read(file))
		err = p.Unload(ctx, mi.Name)
		report(base, "unload", err, read(file))
	}
	helperSteps(ctx)
	fmt.Println("KPTEST done")
}

// helperSteps drives the installed patch /files/helper names ("UUID PROC") through the
// helper's manager with its kernel driver, as syscare apply/deactive/remove do: the
// manager checks the module against the running kernel (release, vmlinux build-id)
// and runtime/kpatch loads, disables and unloads it. The guest has no rpm database,
// so the target-package check is left out (the host test checks the RPM's Requires).
func helperSteps(ctx context.Context) {
	b, err := os.ReadFile("/files/helper")
	if err != nil {
		return
	}
	uuid, proc, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	file := "/proc/" + proc
	const mod = "helper"
	newManager := func() *manager.Manager {
		return manager.New(manager.Config{Root: "/", Drivers: map[string]manager.Driver{patchmeta.KindKernel: manager.NewKernelDriver("/")},
			VerifyPackage: func(context.Context, string, patchmeta.Package) error { return nil }})
	}
	m := newManager()
	err = m.Start(ctx)
	report(mod, "start", err, read(file))
	for _, op := range []manager.Op{manager.OpApply, manager.OpDeactive, manager.OpActive, manager.OpRemove} {
		st, err := m.Transition(ctx, op, []string{uuid}, false)
		state := ""
		if len(st) == 1 {
			state = st[0].State.String()
		}
		report(mod, op.String(), err, state+": "+read(file))
	}
	bootSteps(ctx, uuid, file, newManager)
}

// bootSteps checks that an ACCEPTED kernel patch comes back when the helper starts on
// a new boot: the patch is applied and accepted, then the kernel is brought to what a
// reboot leaves (the livepatch disabled and unloaded behind the manager's back, the
// state file's boot id that of an earlier boot), and a new manager - a helper started
// at boot - must load and enable it again on its own. The patch is removed last.
func bootSteps(ctx context.Context, uuid, file string, newManager func() *manager.Manager) {
	const mod = "boot"
	m := newManager()
	if err := m.Start(ctx); err != nil {
		report(mod, "start", err, "")
		return
	}
	for _, op := range []manager.Op{manager.OpApply, manager.OpAccept} {
		st, err := m.Transition(ctx, op, []string{uuid}, false)
		report(mod, op.String(), err, stateOf(st)+": "+read(file))
	}
	p := kpatch.New()
	p.Timeout = 60 * time.Second
	names, _ := os.ReadDir("/sys/kernel/livepatch")
	var err error
	for _, n := range names {
		if e := p.Disable(ctx, n.Name()); e != nil {
			err = e
		} else if e := p.Unload(ctx, n.Name()); e != nil {
			err = e
		}
	}
	if err == nil {
		err = forgetBoot("/var/lib/syscare/state.json")
	}
	report(mod, "reboot", err, read(file))
	m = newManager()
	err = m.Start(ctx)
	st, serr := m.Status([]string{uuid})
	report(mod, "restart", errors.Join(err, serr), stateOf(st)+": "+read(file))
	st, err = m.Transition(ctx, manager.OpRemove, []string{uuid}, false)
	report(mod, "remove", err, stateOf(st)+": "+read(file))
}

func stateOf(st []manager.Status) string {
	if len(st) != 1 {
		return fmt.Sprintf("%d entities", len(st))
	}
	return st[0].State.String()
}

// forgetBoot rewrites the state file's boot id to one of an earlier boot, as the file
// reads after a reboot.
func forgetBoot(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var snap map[string]any
	if err := json.Unmarshal(b, &snap); err != nil {
		return err
	}
	if _, ok := snap["boot_id"]; !ok {
		return fmt.Errorf("%s has no boot_id", path)
	}
	snap["boot_id"] = "00000000-0000-0000-0000-000000000000"
	b, _ = json.Marshal(snap)
	return os.WriteFile(path, b, 0o600)
}
