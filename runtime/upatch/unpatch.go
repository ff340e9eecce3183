package upatch

import (
	"bytes"
	"fmt"
	"runtime"
	"sync"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// Unpatch removes the patch uuid from the process pid: it checks that no thread runs
// or will return into the patch's code, restores the original bytes of every replaced
// function and unmaps the patch. Patches stacked on the same function come off last
// in, first out.
func (e *Engine) Unpatch(pid int, uuid string, o Options) error {
	_, err := e.UnpatchStats(pid, uuid, o)
	return err
}

// UnpatchStats is Unpatch, returning measurements too.
func (e *Engine) UnpatchStats(pid int, uuid string, o Options) (Stats, error) {
	t := e.tracer()
	defer e.release(t)
	return e.unpatch(t, pid, uuid, o)
}

func (e *Engine) unpatch(t *ptrace.Tracer, pid int, uuid string, o Options) (Stats, error) {
	var maps []proc.Mapping
	var mods []frameModule
	readMaps := func(int) error {
		var err error
		if maps, err = proc.Maps(pid); err != nil {
			return exited(pid, err)
		}
		mods = e.frameModules(pid, maps)
		return nil
	}
	q := openQuery(pid)
	defer q.Close()
	return e.frozen(t, pid, o, readMaps, func(pr *ptrace.Process) error { return removePatch(pr, maps, mods, q, uuid) })
}

func removePatch(pr *ptrace.Process, maps []proc.Mapping, mods []frameModule, q *proc.Query, uuid string) error {
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
	if err := checkThreads(pr, vm, live, ranges, patch, entries); err != nil {
		return err
	}
	// Original bytes back and memory unmapped as one step (commit.go).
	if err := removeRegion(pr, h); err != nil {
		return exited(pr.Pid, fmt.Errorf("remove patch %s: %w", uuid, err))
	}
	return nil
}

// Info lists the patches applied in the process, read from the process itself. It
// does not stop the process.
func (e *Engine) Info(pid int) ([]Applied, error) {
	maps, err := proc.Maps(pid)
	if err != nil {
		return nil, exited(pid, err)
	}
	headers, err := readHeaders(ptrace.Remote{Pid: pid}, maps)
	if err != nil {
		return nil, err
	}
	out := make([]Applied, 0, len(headers))
	for _, h := range headers {
		if h.Pending {
			continue // not in: the next patch or unpatch rolls it back
		}
		a := Applied{UUID: h.UUID, Target: h.Target, Seq: int(h.Seq), Base: h.Base, Size: h.Size}
		for _, f := range h.Funcs {
			a.Funcs = append(a.Funcs, AppliedFunc{Name: f.Name, Old: f.Old, New: f.New})
		}
		out = append(out, a)
	}
	return out, nil
}

// PatchAll applies obj to every process in pids, several at a time.
func (e *Engine) PatchAll(pids []int, obj *patchobj.Object, o Options) []Result {
	return e.batch(pids, func(t *ptrace.Tracer, pid int) (Stats, error) { return e.patch(t, pid, obj, o) })
}

// UnpatchAll removes the patch uuid from every process in pids.
func (e *Engine) UnpatchAll(pids []int, uuid string, o Options) []Result {
	return e.batch(pids, func(t *ptrace.Tracer, pid int) (Stats, error) { return e.unpatch(t, pid, uuid, o) })
}

func (e *Engine) batch(pids []int, op func(*ptrace.Tracer, int) (Stats, error)) []Result {
	res := make([]Result, len(pids))
	workers := min(runtime.GOMAXPROCS(0)*2, len(pids))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := e.tracer()
			defer e.release(t)
			for i := range next {
				st, err := op(t, pids[i])
				res[i] = Result{Pid: pids[i], Err: err, Stats: st}
			}
		}()
	}
	for i := range pids {
		next <- i
	}
	close(next)
	wg.Wait()
	return res
}
