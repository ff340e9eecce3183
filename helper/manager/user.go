package manager

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchobj"
)

// Engine is what the user-space driver needs from the patch engine (runtime/upatch):
// narrow, so the state machine can be tested with a fake and the real engine plugs in
// through an adapter.
type Engine interface {
	// Processes returns the pids that map the file at path.
	Processes(path string) ([]int, error)
	// PatchAll loads obj into every pid, on the ELF mapped from binary, under uuid, and
	// returns one error per pid. A process that already has uuid is not an error.
	// progress, unless nil, is called after each process with how many are done of
	// len(pids), one call at a time.
	PatchAll(pids []int, obj *patchobj.Object, binary, uuid string, force bool, progress func(done, total int)) []error
	// UnpatchAll removes uuid from every pid; a process without it is not an error.
	UnpatchAll(pids []int, binary, uuid string, force bool, progress func(done, total int)) []error
	// Applied returns the patch uuids recorded inside pid, in stacking order.
	Applied(pid int) ([]string, error)
	// Live returns every patch recorded inside any process, whatever its target: the
	// record of patches whose files are gone.
	Live() ([]LivePatch, error)
}

// LivePatch is a patch found inside running processes by the header it left there.
type LivePatch struct {
	UUID string
	// Target is the patched file as the processes map it (a host path).
	Target string
	Funcs  []string
	Pids   []int
}

// LiveReporter is a Driver that can list the patches live in the system, including
// those the manager has no directory for.
type LiveReporter interface {
	Live(ctx context.Context) ([]LivePatch, error)
}

// ErrProcessGone is wrapped by Engine errors for a process that exited meanwhile; such a
// process needs no patch.
var ErrProcessGone = errors.New("process exited")

// Watcher arms new-process notifications for a target (runtime/watch).
type Watcher interface {
	Add(path string) error
	Remove(path string) error
}

// UserDriver drives user-space patches through an Engine.
type UserDriver struct {
	Engine Engine
	// Host maps a target path of patch.json to the path on this host (root prefix).
	Host func(string) string
	// Watch, if set, is armed before the first process of a target is patched, so that
	// no process started meanwhile is missed.
	Watch Watcher
	// watched counts active entities per host target.
	watched map[string]int
	// pids caches Engine.Processes per host target during a transaction: scanning every
	// process's maps costs milliseconds, and a transaction on many patches of one target
	// would otherwise repeat it for every step. A process that starts meanwhile is
	// caught by Watch; one that exits is skipped.
	pids map[string][]int
	// live caches Engine.Live during a transaction, like pids.
	live []LivePatch
	// Progress, if set, hears how many processes of an entity are done while it is
	// activated or deactivated (op "activate" or "deactivate"), for a front end to show
	// a long batch; it is called often (once per process) and must not block.
	Progress func(op, entity string, done, total int)
}

// progress returns the Engine's callback for op on e, nil without a listener.
func (u *UserDriver) progress(op string, e *Entity) func(done, total int) {
	if u.Progress == nil {
		return nil
	}
	name := e.Name()
	return func(done, total int) { u.Progress(op, name, done, total) }
}

// Begin starts caching process lists.
func (u *UserDriver) Begin() { u.pids, u.live = map[string][]int{}, nil }

// End drops the cached process lists.
func (u *UserDriver) End() { u.pids, u.live = nil, nil }

// Live lists the patches recorded inside processes.
func (u *UserDriver) Live(context.Context) ([]LivePatch, error) {
	if u.live != nil {
		return u.live, nil
	}
	lps, err := u.Engine.Live()
	if err == nil && u.pids != nil {
		u.live = lps
	}
	return lps, err
}

// pidsOf returns the processes to look at for e: those that map its target, or, when
// the patch's files are gone (the target may have been replaced too), those whose
// headers say they hold it.
func (u *UserDriver) pidsOf(e *Entity) ([]int, error) {
	if !e.Patch.Gone {
		return u.processes(u.Host(e.Meta.TargetPath))
	}
	lps, err := u.Live(context.Background())
	for _, lp := range lps {
		if lp.UUID == e.UUID() {
			return lp.Pids, err
		}
	}
	return nil, err
}

func (u *UserDriver) processes(host string) ([]int, error) {
	if pids, ok := u.pids[host]; ok {
		return pids, nil
	}
	pids, err := u.Engine.Processes(host)
	if err == nil && u.pids != nil {
		u.pids[host] = pids
	}
	return pids, err
}

// Check compares the target ELF's build-id with patch.json.
func (u *UserDriver) Check(_ context.Context, e *Entity) error {
	path := u.Host(e.Meta.TargetPath)
	f, err := elfsafe.Open(path)
	if err != nil {
		return fmt.Errorf("target %s: %w", path, err)
	}
	defer f.Close()
	if e.Meta.BuildID == "" {
		return nil
	}
	id, err := elfsafe.BuildID(f.File)
	if err != nil {
		return fmt.Errorf("target %s: build-id: %w", path, err)
	}
	if hex.EncodeToString(id) != e.Meta.BuildID {
		return fmt.Errorf("target %s: build-id %x, patch is for %s", path, id, e.Meta.BuildID)
	}
	return nil
}

// Load parses the patch object.
func (u *UserDriver) Load(_ context.Context, e *Entity) error {
	b, err := os.ReadFile(e.File())
	if err != nil {
		return err
	}
	obj, err := patchobj.Parse(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%s: %w", e.Meta.File, err)
	}
	e.Data = obj
	return nil
}

// Unload drops the parsed object.
func (u *UserDriver) Unload(_ context.Context, e *Entity) error {
	e.Data = nil
	return nil
}

func (u *UserDriver) force(e *Entity, force bool) bool {
	// The helper checked the target file's build-id itself; the engine's own check only
	// needs forcing when the object carries none.
	return force || e.Meta.BuildID != ""
}

// Activate patches every process that maps the target; on any failure it takes the
// patch out of the processes it went into and names the failed ones.
func (u *UserDriver) Activate(ctx context.Context, e *Entity, force bool) error {
	obj, ok := e.Data.(*patchobj.Object)
	if !ok {
		return errors.New("patch object not loaded")
	}
	host := u.Host(e.Meta.TargetPath)
	if err := u.watch(host); err != nil {
		return err
	}
	pids, err := u.processes(host)
	if err != nil {
		u.unwatch(host)
		return fmt.Errorf("find processes of %s: %w", host, err)
	}
	if err := ctx.Err(); err != nil {
		u.unwatch(host)
		return err
	}
	done, fails, firstErr := split(pids, u.Engine.PatchAll(pids, obj, host, e.UUID(), u.force(e, force), u.progress("activate", e)))
	if firstErr == nil {
		return nil
	}
	nfail := len(fails)
	for i, err := range u.Engine.UnpatchAll(done, host, e.UUID(), true, nil) {
		if err != nil && !errors.Is(err, ErrProcessGone) {
			fails = append(fails, fmt.Sprintf("pid %d: undo: %v", done[i], err))
		}
	}
	u.unwatch(host)
	return &processesError{msg: fmt.Sprintf("%d of %d processes failed: %s", nfail, len(pids), strings.Join(fails, "; ")), cause: firstErr}
}

// processesError names every failed process; it unwraps to the first failure so that
// its kind (busy, build-id, ...) stays visible to errors.Is.
type processesError struct {
	msg   string
	cause error
}

func (e *processesError) Error() string { return e.msg }
func (e *processesError) Unwrap() error { return e.cause }

// split sorts per-pid results into the pids done and the failures; exited processes
// count as neither.
func split(pids []int, errs []error) (done []int, fails []string, first error) {
	for i, pid := range pids {
		var err error
		if i < len(errs) {
			err = errs[i]
		}
		switch {
		case err == nil:
			done = append(done, pid)
		case errors.Is(err, ErrProcessGone):
		default:
			if first == nil {
				first = err
			}
			fails = append(fails, fmt.Sprintf("pid %d: %v", pid, err))
		}
	}
	return done, fails, first
}

// Deactivate removes the patch from every process; on failure it puts it back into the
// processes it came out of.
func (u *UserDriver) Deactivate(ctx context.Context, e *Entity, force bool) error {
	host := u.Host(e.Meta.TargetPath)
	pids, err := u.pidsOf(e)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("find processes of %s: %w", host, err)
	}
	done, fails, firstErr := split(pids, u.Engine.UnpatchAll(pids, host, e.UUID(), force, u.progress("deactivate", e)))
	if firstErr == nil {
		u.live = nil
		// A rebuilt patch never armed the watch: another patch of the target may have.
		if !e.Patch.Rebuilt {
			u.unwatch(host)
		}
		return nil
	}
	nfail := len(fails)
	if obj, ok := e.Data.(*patchobj.Object); ok {
		for i, err := range u.Engine.PatchAll(done, obj, host, e.UUID(), true, nil) {
			if err != nil && !errors.Is(err, ErrProcessGone) {
				fails = append(fails, fmt.Sprintf("pid %d: redo: %v", done[i], err))
			}
		}
	}
	return &processesError{msg: fmt.Sprintf("%d of %d processes failed: %s", nfail, len(pids), strings.Join(fails, "; ")), cause: firstErr}
}

func (u *UserDriver) watch(host string) error {
	if u.Watch == nil {
		return nil
	}
	if u.watched == nil {
		u.watched = map[string]int{}
	}
	if u.watched[host] == 0 {
		if err := u.Watch.Add(host); err != nil {
			return fmt.Errorf("watch new processes of %s: %w", host, err)
		}
	}
	u.watched[host]++
	return nil
}

func (u *UserDriver) unwatch(host string) {
	if u.Watch == nil || u.watched[host] == 0 {
		return
	}
	u.watched[host]--
	if u.watched[host] == 0 {
		delete(u.watched, host)
		u.Watch.Remove(host)
	}
}

// Presence reads the headers inside every process that maps each entity's target.
func (u *UserDriver) Presence(_ context.Context, es []*Entity) (map[*Entity]Presence, error) {
	out := map[*Entity]Presence{}
	pidsOf := map[string][]int{}
	applied := map[int]map[string]bool{}
	var errs []error
	for _, e := range es {
		host := u.Host(e.Meta.TargetPath)
		key := host
		if e.Patch.Gone {
			key = "uuid:" + e.UUID()
		}
		pids, ok := pidsOf[key]
		if !ok {
			var err error
			pids, err = u.pidsOf(e)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("find processes of %s: %w", host, err))
			}
			pidsOf[key] = pids
		}
		have, live := 0, 0
		for _, pid := range pids {
			ids, ok := applied[pid]
			if !ok {
				list, err := u.Engine.Applied(pid)
				if errors.Is(err, ErrProcessGone) {
					applied[pid] = nil
					continue
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
				}
				ids = map[string]bool{}
				for _, id := range list {
					ids[id] = true
				}
				applied[pid] = ids
			}
			if ids == nil {
				continue
			}
			live++
			if ids[e.UUID()] {
				have++
			}
		}
		switch {
		case live == 0:
			out[e] = NoTarget
		case have == live:
			out[e] = Present
		case have == 0:
			out[e] = Absent
		default:
			out[e] = Partial
		}
	}
	return out, errors.Join(errs...)
}

// Processes reports the state of e in every process that maps its target.
func (u *UserDriver) Processes(_ context.Context, e *Entity) ([]ProcessState, error) {
	host := u.Host(e.Meta.TargetPath)
	pids, err := u.pidsOf(e)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("find processes of %s: %w", host, err)
	}
	pids = slices.Clone(pids)
	sort.Ints(pids)
	var out []ProcessState
	for _, pid := range pids {
		ps := ProcessState{Pid: pid, State: NotApplied}
		if nr, ok := u.Engine.(NamespaceReader); ok {
			ps.MountNS, ps.Container, _ = nr.Namespace(pid)
		}
		ids, err := u.Engine.Applied(pid)
		if errors.Is(err, ErrProcessGone) {
			continue
		}
		if err != nil {
			ps.Detail = err.Error()
		}
		for _, id := range ids {
			if id == e.UUID() {
				ps.State = Actived
			}
		}
		out = append(out, ps)
	}
	return out, nil
}

// PatchNew patches a new process with the active entities of its target, in order.
func (u *UserDriver) PatchNew(_ context.Context, pid int, es []*Entity) error {
	var errs []error
	for _, e := range es {
		obj, ok := e.Data.(*patchobj.Object)
		if !ok {
			continue
		}
		err := u.Engine.PatchAll([]int{pid}, obj, u.Host(e.Meta.TargetPath), e.UUID(), true, nil)[0]
		if errors.Is(err, ErrProcessGone) {
			return nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}
