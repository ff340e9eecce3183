package upatch

import (
	"errors"
	"fmt"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/ptrace"
)

// maxRounds bounds the rescans of PatchBinary and UnpatchBinary.
const maxRounds = 16

// PatchBinary applies obj to every process that maps the file at path (o.Binary
// names the mapping to patch, as in Patch). A process forked, after the processes
// were listed, from one not yet patched would run the old code unseen (a pre-fork
// server respawning a worker), so the processes are listed again after each batch
// and the newcomers patched. A newcomer that already holds the patch inherited it
// from a patched parent; one that exited before its turn is left out of the results.
// A listing whose newcomers all are such ends the rescans: every process alive when
// it was taken holds the patch, and any forked since inherits it.
func (e *Engine) PatchBinary(path string, obj *patchobj.Object, o Options) ([]Result, error) {
	return e.allMapping(path, ErrAlreadyApplied, func(pids []int) []Result { return e.PatchAll(pids, obj, o) })
}

// UnpatchBinary removes the patch uuid from every process that maps the file at
// path, rescanning as PatchBinary does; a newcomer without the patch was forked from
// a parent the patch had already left.
func (e *Engine) UnpatchBinary(path, uuid string, o Options) ([]Result, error) {
	return e.allMapping(path, ErrNotApplied, func(pids []int) []Result { return e.UnpatchAll(pids, uuid, o) })
}

func (e *Engine) allMapping(path string, inherited error, batch func([]int) []Result) ([]Result, error) {
	seen := map[int]bool{}
	var out []Result
	for round := 0; ; round++ {
		pids, err := Processes(path)
		if err != nil {
			return out, fmt.Errorf("find processes mapping %s: %w", path, err)
		}
		var fresh []int
		for _, pid := range pids {
			if !seen[pid] {
				seen[pid] = true
				fresh = append(fresh, pid)
			}
		}
		if len(fresh) == 0 {
			return out, nil
		}
		if round == maxRounds {
			return out, fmt.Errorf("processes mapping %s: still new ones after %d rounds: %v", path, maxRounds, fresh)
		}
		res := batch(fresh)
		if round == 0 {
			out = append(out, res...)
			continue
		}
		worked := false
		for _, r := range res {
			switch {
			case errors.Is(r.Err, inherited):
				r.Err = nil
			case errors.Is(r.Err, ptrace.ErrExited):
				continue
			default:
				worked = true
			}
			out = append(out, r)
		}
		if !worked {
			return out, nil
		}
	}
}
