package upatch

import (
	"bytes"
	"fmt"

	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// Removing a patch from one process; Unpatch (engine.go) is the entry point.

func (e *Engine) unpatch(t *ptrace.Tracer, pid int, uuid string, o Options) (Stats, error) {
	var maps []proc.Mapping
	var mods []frameModule
	var area stackArea
	readMaps := func(int) error {
		var err error
		if maps, err = proc.Maps(pid); err != nil {
			return exited(pid, err)
		}
		mods = e.frameModules(pid, maps)
		if area == nil {
			// Worth it with several threads (a single one has one stack to copy).
			if tids, _ := proc.Threads(pid); len(tids) > 1 {
				area = getStackArea(len(tids))
			}
		}
		return nil
	}
	defer func() { putStackArea(area) }()
	q := openQuery(pid)
	defer q.Close()
	return e.frozen(t, pid, o, readMaps, func(pr *ptrace.Process) error { return removePatch(pr, maps, mods, q, uuid, o.KeepShadow, area) })
}

func removePatch(pr *ptrace.Process, maps []proc.Mapping, mods []frameModule, q *proc.Query, uuid string, keepShadow bool, area stackArea) error {
	headers, err := readHeaders(pr, maps)
	if err != nil {
		return err
	}
	if headers, err = repairPending(pr, headers); err != nil {
		return err
	}
	var h *Header
	for _, c := range headers {
		if c.UUID == uuid {
			h = c
		}
	}
	if h == nil {
		return fmt.Errorf("%w: %s is not in pid %d", ErrNotApplied, uuid, pr.Pid)
	}
	// Last in, first out: a later patch of the same function must come off first.
	for _, c := range headers {
		if c.Seq <= h.Seq {
			continue
		}
		for _, cf := range c.Funcs {
			for _, hf := range h.Funcs {
				if cf.Old == hf.Old {
					return fmt.Errorf("%w: %s replaces %q after %s; remove it first", ErrStacked, c.UUID, cf.Name, uuid)
				}
			}
		}
	}
	// One read for the jumps of every function.
	addrs, cur := make([]uint64, len(h.Funcs)), make([][]byte, len(h.Funcs))
	for i, f := range h.Funcs {
		addrs[i], cur[i] = f.Old, make([]byte, len(jumpBytes(f.Old, f.New)))
	}
	if err := pr.ReadMemv(addrs, cur); err != nil {
		return exited(pr.Pid, fmt.Errorf("read replaced functions: %w", err))
	}
	for i, f := range h.Funcs {
		if !bytes.Equal(cur[i], jumpBytes(f.Old, f.New)) {
			return fmt.Errorf("function %q at %#x no longer jumps to patch %s: refusing to restore it", f.Name, f.Old, uuid)
		}
	}
	// A thread inside a new function is named by it, elsewhere in the patch by the patch.
	patch := &busyRange{lo: h.Base, hi: h.Base + h.TextSize, name: "patch " + uuid}
	ranges := make([]busyRange, 0, len(h.Funcs))
	entries := make(map[uint64]bool, len(h.Funcs))
	for _, f := range h.Funcs {
		ranges = append(ranges, busyRange{lo: f.New, hi: f.New + max(f.NewSize, 1), name: f.Name})
		entries[f.Old] = true
	}
	vm, live, err := stoppedMaps(pr, mods, q)
	if err != nil {
		return err
	}
	if err := checkThreads(pr, vm, live, ranges, patch, entries, area); err != nil {
		return err
	}
	// The shadow-variable table goes with the last patch that uses it; memory
	// that no longer looks like the table (overwritten by the program) is left
	// mapped: removing the patch matters more than those pages.
	table := lastShadowUser(h, headers)
	if table != 0 && (keepShadow || checkShadow(pr, table) != nil) {
		table = 0
	}
	// A table that stays must not keep destructors in the code that goes.
	if h.Shadow != 0 && table == 0 && checkShadow(pr, h.Shadow) == nil {
		if err := forgetDestructors(pr, h.Shadow, h.Base, h.Base+h.Size); err != nil {
			return err
		}
	}
	// Original bytes back and memory unmapped as one step (commit.go).
	if err := removeRegion(pr, h); err != nil {
		return exited(pr.Pid, fmt.Errorf("remove patch %s: %w", uuid, err))
	}
	if table != 0 {
		if err := releaseShadow(pr, table); err != nil {
			return exited(pr.Pid, fmt.Errorf("patch %s removed, but: %w", uuid, err))
		}
	}
	return nil
}
