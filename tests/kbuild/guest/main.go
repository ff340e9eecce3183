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
	m := manager.New(manager.Config{Root: "/", Drivers: map[string]manager.Driver{patchmeta.KindKernel: manager.NewKernelDriver("/")},
		VerifyPackage: func(context.Context, string, patchmeta.Package) error { return nil }})
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
}
