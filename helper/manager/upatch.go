package manager

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/upatch"
)

// UpatchEngine adapts runtime/upatch to Engine and gives each of its sentinel errors its
// kind (classify): the one place that says which bus error an engine failure is.
type UpatchEngine struct{ E *upatch.Engine }

// NewUpatchEngine returns the real engine; root prefixes /usr/lib/debug lookups.
func NewUpatchEngine(root string) UpatchEngine { return UpatchEngine{E: upatch.NewEngine(root)} }

// Processes returns the pids that map path or a copy of it with the same build-id (a
// container's own copy included).
func (a UpatchEngine) Processes(path string) ([]int, error) { return upatch.Processes(path) }

// busyWait bounds how long the engine waits for a thread busy in a replaced function
// (or in the patch) to return from it before it reports the process busy.
const busyWait = 5 * time.Second

// Namespace returns the mount namespace and container of pid.
func (a UpatchEngine) Namespace(pid int) (uint64, string, error) {
	ns, err := proc.NamespaceOf(pid)
	return ns.MntNS, ns.Container, err
}

// PatchAll patches every pid.
func (a UpatchEngine) PatchAll(pids []int, obj *patchobj.Object, binary, uuid string, force bool, progress func(done, total int)) []error {
	res := a.E.PatchAll(pids, obj, upatch.Options{Binary: binary, UUID: uuid, Force: force, Timeout: busyWait, Progress: progressOf(progress)})
	return classifyAll(res, upatch.ErrAlreadyApplied)
}

// UnpatchAll unpatches every pid.
func (a UpatchEngine) UnpatchAll(pids []int, binary, uuid string, force bool, progress func(done, total int)) []error {
	res := a.E.UnpatchAll(pids, uuid, upatch.Options{Binary: binary, UUID: uuid, Force: force, Timeout: busyWait, Progress: progressOf(progress)})
	return classifyAll(res, upatch.ErrNotApplied)
}

func progressOf(f func(done, total int)) func(int, int, upatch.Result) {
	if f == nil {
		return nil
	}
	return func(done, total int, _ upatch.Result) { f(done, total) }
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

// Live reads the patch headers of every process on the host. Processes that exit
// meanwhile are skipped; one whose headers cannot be read is reported without
// hiding the others.
func (a UpatchEngine) Live() ([]LivePatch, error) {
	pids, err := proc.Pids()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	byUUID := map[string]*LivePatch{}
	var order []string
	var errs []error
	for _, pid := range pids {
		if pid == self {
			continue
		}
		as, err := a.E.Info(pid)
		if err != nil {
			// A process whose memory root cannot read (another user namespace's init)
			// cannot have been patched by this helper either.
			if !errors.Is(classify(err), ErrProcessGone) && !proc.IsGone(err) && !errors.Is(err, os.ErrPermission) {
				errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
			}
			continue
		}
		for _, x := range as {
			// A header is memory of the process: any process can forge one. Only a
			// well-formed uuid for a file the process really maps is taken.
			if !safeUUID(x.UUID) || !mapsFile(pid, x.Target) {
				continue
			}
			lp, ok := byUUID[x.UUID]
			if !ok {
				lp = &LivePatch{UUID: x.UUID, Target: x.Target}
				for _, f := range x.Funcs {
					lp.Funcs = append(lp.Funcs, f.Name)
				}
				byUUID[x.UUID] = lp
				order = append(order, x.UUID)
			}
			lp.Pids = append(lp.Pids, pid)
		}
	}
	out := make([]LivePatch, len(order))
	for i, id := range order {
		out[i] = *byUUID[id]
	}
	return out, errors.Join(errs...)
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

// classify wraps an engine error in its kind, keeping the engine's error for the message
// and for errors.Is; the kind carries the bus error name (package syscarebus).
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

// safeUUID tells whether a uuid read from a process can name a patch directory: 1 to
// 64 letters, digits, '-', '_' or '.', and not "." or "..".
func safeUUID(id string) bool {
	if id == "" || len(id) > 64 || id == "." || id == ".." {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// mapsFile tells whether pid maps the file path.
func mapsFile(pid int, path string) bool {
	maps, err := proc.Maps(pid)
	if err != nil {
		return false
	}
	for _, m := range maps {
		if m.Path == path {
			return true
		}
	}
	return false
}
