package manager

import (
	"errors"
	"fmt"
	"sort"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/upatch"
)

// UpatchEngine adapts runtime/upatch to Engine and turns its sentinel errors into the
// manager's.
type UpatchEngine struct{ E *upatch.Engine }

// NewUpatchEngine returns the real engine; root prefixes /usr/lib/debug lookups.
func NewUpatchEngine(root string) UpatchEngine { return UpatchEngine{E: upatch.NewEngine(root)} }

// Processes returns the pids that map path.
func (a UpatchEngine) Processes(path string) ([]int, error) { return upatch.Processes(path) }

// PatchAll patches every pid.
func (a UpatchEngine) PatchAll(pids []int, obj *patchobj.Object, binary, uuid string, force bool) []error {
	res := a.E.PatchAll(pids, obj, upatch.Options{Binary: binary, UUID: uuid, Force: force})
	return classifyAll(res, upatch.ErrAlreadyApplied)
}

// UnpatchAll unpatches every pid.
func (a UpatchEngine) UnpatchAll(pids []int, binary, uuid string, force bool) []error {
	res := a.E.UnpatchAll(pids, uuid, upatch.Options{Binary: binary, UUID: uuid, Force: force})
	return classifyAll(res, upatch.ErrNotApplied)
}

// Applied returns the patch uuids inside pid in stacking order.
func (a UpatchEngine) Applied(pid int) ([]string, error) {
	as, err := a.E.Info(pid)
	if err != nil {
		return nil, classify(err)
	}
	sort.SliceStable(as, func(i, j int) bool { return as[i].Seq < as[j].Seq })
	ids := make([]string, len(as))
	for i, x := range as {
		ids[i] = x.UUID
	}
	return ids, nil
}

func classifyAll(res []upatch.Result, harmless error) []error {
	errs := make([]error, len(res))
	for i, r := range res {
		if r.Err != nil && !errors.Is(r.Err, harmless) {
			errs[i] = classify(r.Err)
		}
	}
	return errs
}

func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ptrace.ErrExited):
		return fmt.Errorf("%w: %w", ErrProcessGone, err)
	case errors.Is(err, upatch.ErrBusy):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, upatch.ErrBuildID):
		return fmt.Errorf("%w: %w", ErrVerify, err)
	case errors.Is(err, upatch.ErrStacked):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	}
	return err
}
