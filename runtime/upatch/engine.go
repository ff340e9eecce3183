package upatch

import (
	"errors"
	"sync"
	"time"

	"github.com/syscare/syscare/runtime/layout"
	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/symbols"
)

// Sentinel errors, wrapped with details.
var (
	ErrBusy           = errors.New("function busy")
	ErrBuildID        = errors.New("build-id mismatch")
	ErrAlreadyApplied = errors.New("patch already applied")
	ErrNotApplied     = errors.New("patch not applied")
	ErrStacked        = errors.New("another patch is stacked on top")
	ErrNoTarget       = errors.New("target not mapped")
	ErrInterposed     = errors.New("function interposed by the executable")
)

const (
	pageSize  = 4096
	jmpRel32  = 5
	jmpAbs    = 14
	maxRegion = 1 << 30
)

// Options controls one patch or unpatch.
type Options struct {
	// Binary is the mapped ELF to patch: "" for the main executable, else the path of
	// a shared library (or executable) as it appears in /proc/PID/maps.
	Binary string
	// UUID identifies the patch in the process.
	UUID string
	// Force patches a target although the object records no build-id.
	Force bool
	// Retries is how many times a busy process is tried (default 3).
	Retries int
	// RetryDelay is the first wait between tries; it doubles each time (default 100ms).
	RetryDelay time.Duration
	// Timeout, when positive, bounds a wait for busy threads to leave the functions
	// (see wait.go): the process runs meanwhile and is patched as soon as they left,
	// in the same attach. Zero means no waiting: a busy process is retried.
	Timeout time.Duration
	// Cancel, when closed, ends a wait early; the process is left as it was and the
	// error wraps ptrace.ErrCanceled.
	Cancel <-chan struct{}
	// Warn receives warnings (no build-id recorded, ...); may be nil.
	Warn func(string)
	// KeepShadow (unpatch) leaves the shadow-variable table mapped when the last
	// patch that uses it goes, for the next patch to adopt: a cumulative patch that
	// replaces this one keeps the data attached so far. Without a next patch the
	// table stays mapped, unused, until a patch adopts it and is removed in turn.
	KeepShadow bool
	// Progress, when set, is called after each process of a batch with how many are
	// done, how many the batch has and that process's result (one call at a time); a
	// front end shows it. PatchBinary's rescans each start a new batch.
	Progress func(done, total int, r Result)
}

func (o Options) retries() int {
	if o.Retries <= 0 {
		return 3
	}
	return o.Retries
}

func (o Options) delay() time.Duration {
	if o.RetryDelay <= 0 {
		return 100 * time.Millisecond
	}
	return o.RetryDelay
}

// Stats are the measurements of one operation on one process.
type Stats struct {
	// Freeze is the time from stopping the first thread to detaching the last.
	Freeze time.Duration
	// Stop is the part of Freeze spent stopping the threads, Work the part spent
	// with all of them stopped; the rest is resuming them.
	Stop, Work time.Duration
	// Wait is the time the process ran while the engine waited for busy threads
	// to leave (not part of Freeze).
	Wait time.Duration
	// Tries is the number of attempts (more than 1 when threads were busy).
	Tries int
}

// Result is the outcome for one process of a batch.
type Result struct {
	Pid   int
	Err   error
	Stats Stats
}

// Applied describes a patch found inside a process.
type Applied struct {
	UUID   string        `json:"uuid"`
	Target string        `json:"target"`
	Seq    int           `json:"seq"`
	Base   uint64        `json:"base"`
	Size   uint64        `json:"size"`
	Funcs  []AppliedFunc `json:"functions"`
	// Shadow is the process's shadow-variable table if the patch uses it (upatch.h).
	Shadow uint64 `json:"shadow,omitempty"`
}

// AppliedFunc is one replaced function of an applied patch.
type AppliedFunc struct {
	Name string `json:"name"`
	Old  uint64 `json:"old"`
	New  uint64 `json:"new"`
}

// Engine patches processes. It is safe for concurrent use; each concurrent
// operation runs on its own ptrace tracer thread.
type Engine struct {
	root   string
	elfs   *symbols.Cache
	frames frameTables
	vdso   vdsoTable
	plans  sync.Map // *patchobj.Object -> *planEntry
	pool   sync.Pool
}

type planEntry struct {
	once sync.Once
	plan *layout.Plan
	err  error
}

// NewEngine returns an engine; root prefixes the separate-debuginfo directories.
func NewEngine(root string) *Engine {
	e := &Engine{root: root, elfs: symbols.NewCache(symbols.Options{Root: root})}
	return e
}

func (e *Engine) tracer() *ptrace.Tracer {
	if t, ok := e.pool.Get().(*ptrace.Tracer); ok {
		return t
	}
	return ptrace.NewTracer()
}

func (e *Engine) release(t *ptrace.Tracer) { e.pool.Put(t) }

func (e *Engine) plan(obj *patchobj.Object) (*layout.Plan, error) {
	v, _ := e.plans.LoadOrStore(obj, &planEntry{})
	pe := v.(*planEntry)
	pe.once.Do(func() { pe.plan, pe.err = layout.NewPlan(obj) })
	return pe.plan, pe.err
}

// Prefetch starts reading, in the background, what patching pid will need from
// files: the symbol tables of the target (o.Binary, as in Options) and the
// call-frame tables of every executable mapping. Both land in the engine's caches,
// keyed by the files' identity, where the patch takes them, or waits for a read
// still in progress. A front end calls it before work of its own, such as parsing
// the patch object, so that the two overlap. Failures are left for the patch to
// find and report.
func (e *Engine) Prefetch(pid int, o Options) {
	go func() {
		maps, err := proc.Maps(pid)
		if err != nil {
			return
		}
		go e.frameModules(pid, maps)
		if tgt, err := findTarget(pid, maps, o.Binary); err == nil {
			_, _ = e.elfs.Open(tgt.file)
		}
	}()
}

// Processes returns the pids of every process that maps the file at path, or a copy
// of it with the same build-id (a container's own copy; see copies.go).
func Processes(path string) ([]int, error) { return proc.ProcessesOfFile(path) }

// Patch applies obj to the process pid.
func (e *Engine) Patch(pid int, obj *patchobj.Object, o Options) error {
	_, err := e.PatchStats(pid, obj, o)
	return err
}

// PatchStats is Patch, returning measurements too.
func (e *Engine) PatchStats(pid int, obj *patchobj.Object, o Options) (Stats, error) {
	t := e.tracer()
	defer e.release(t)
	return e.patch(t, pid, obj, o)
}

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

// PatchAll applies obj to every process in pids, several at a time.
func (e *Engine) PatchAll(pids []int, obj *patchobj.Object, o Options) []Result {
	return e.batch(pids, o.Progress, func(t *ptrace.Tracer, pid int) (Stats, error) { return e.patch(t, pid, obj, o) })
}

// UnpatchAll removes the patch uuid from every process in pids.
func (e *Engine) UnpatchAll(pids []int, uuid string, o Options) []Result {
	return e.batch(pids, o.Progress, func(t *ptrace.Tracer, pid int) (Stats, error) { return e.unpatch(t, pid, uuid, o) })
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
		a := Applied{UUID: h.UUID, Target: h.Target, Seq: int(h.Seq), Base: h.Base, Size: h.Size, Shadow: h.Shadow}
		for _, f := range h.Funcs {
			a.Funcs = append(a.Funcs, AppliedFunc{Name: f.Name, Old: f.Old, New: f.New})
		}
		out = append(out, a)
	}
	return out, nil
}
