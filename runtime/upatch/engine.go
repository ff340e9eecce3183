package upatch

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/layout"
	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/symbols"
	"github.com/syscare/syscare/runtime/unwind"
)

// Sentinel errors, wrapped with details.
var (
	ErrBusy           = errors.New("function busy")
	ErrBuildID        = errors.New("build-id mismatch")
	ErrAlreadyApplied = errors.New("patch already applied")
	ErrNotApplied     = errors.New("patch not applied")
	ErrStacked        = errors.New("another patch is stacked on top")
	ErrNoTarget       = errors.New("target not mapped")
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
	// Warn receives warnings (no build-id recorded, ...); may be nil.
	Warn func(string)
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

// Processes returns the pids of every process that maps the file at path, or a copy
// of it with the same build-id (a container's own copy; see copies.go).
func Processes(path string) ([]int, error) { return proc.ProcessesOfFile(path) }

// target is the patched ELF as mapped in one process.
type target struct {
	path   string // as in maps
	file   string // openable path of the exact mapped file
	elf    *symbols.ELF
	bias   uint64
	lo, hi uint64 // address range of its mappings
	dev    uint64
	inode  uint64
}

func findTarget(pid int, maps []proc.Mapping, binary string) (*target, error) {
	var dev, ino uint64
	var name string
	if binary == "" {
		exe, err := proc.Exe(pid)
		if err != nil {
			return nil, err // proc names the process and what it read
		}
		name = strings.TrimSuffix(exe, " (deleted)")
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/exe", pid), &st); err != nil {
			return nil, fmt.Errorf("executable of pid %d: %w", pid, err)
		}
		dev, ino = uint64(st.Dev), st.Ino
	} else {
		name = filepath.Clean(binary)
		// The caller's spelling may differ from the kernel's (a symlinked directory such
		// as /lib64 on merged-/usr systems, a relative path): fall back to the file's
		// identity, as Processes does, and then name the target as maps does.
		var st unix.Stat_t
		if err := unix.Stat(name, &st); err == nil {
			dev, ino = uint64(st.Dev), st.Ino
		}
	}
	t := &target{path: name}
	for _, m := range maps {
		match := false
		if m.Path == name && binary != "" {
			match = true
		} else if ino != 0 && m.Inode == ino {
			// Same inode number: confirm the device too (and learn the kernel's spelling).
			d, i, err := devIno(pid, m)
			if match = err == nil && d == dev && i == ino; match && binary != "" {
				t.path = m.Path
			}
		}
		if !match {
			continue
		}
		// The mapping of file offset 0 with the lowest address gives the load bias.
		if m.Offset == 0 && (t.file == "" || m.Start < t.bias) {
			t.file = proc.MappedFile(pid, m)
			t.bias = m.Start
			t.dev, t.inode = m.Dev, m.Inode
		}
		if t.lo == 0 || m.Start < t.lo {
			t.lo = m.Start
		}
		t.hi = max(t.hi, m.End)
	}
	if t.file == "" && binary != "" {
		if c, ok := copyOf(pid, maps, name); ok {
			return c, nil
		}
	}
	if t.file == "" {
		return nil, fmt.Errorf("pid %d: %w: %s", pid, ErrNoTarget, name)
	}
	return t, nil
}

// devIno returns the identity of the file behind a mapping, comparable to stat().
func devIno(pid int, m proc.Mapping) (uint64, uint64, error) {
	if m.Inode == 0 {
		return 0, 0, errors.New("anonymous")
	}
	var st unix.Stat_t
	if err := unix.Stat(proc.MappedFile(pid, m), &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Dev), st.Ino, nil
}

// prepared is everything computed for one process before it is stopped.
type prepared struct {
	pid   int
	obj   *patchobj.Object
	plan  *layout.Plan
	tgt   *target
	maps  []proc.Mapping
	mods  []frameModule // call-frame tables of the mapped files, for the stack check
	funcs []oldFunc
	res   *resolver
	uuid  string
}

type oldFunc struct {
	name string
	pos  uint64
	addr uint64
	size uint64 // from the symbol table
	room uint64 // bytes up to the next symbol: size plus alignment padding
}

func (e *Engine) prepare(pid int, obj *patchobj.Object, o Options) (*prepared, error) {
	if o.UUID == "" || len(o.UUID) > maxUUIDLen {
		return nil, fmt.Errorf("patch uuid %q: must be 1 to %d characters", o.UUID, maxUUIDLen)
	}
	plan, err := e.plan(obj)
	if err != nil {
		return nil, fmt.Errorf("lay out patch: %w", err)
	}
	maps, err := proc.Maps(pid)
	if err != nil {
		return nil, exited(pid, err)
	}
	tgt, err := findTarget(pid, maps, o.Binary)
	if err != nil {
		return nil, exitedOr(pid, len(maps) == 0, err)
	}
	ef, err := e.elfs.Open(tgt.file)
	if err != nil {
		return nil, exitedOr(pid, proc.IsGone(err), fmt.Errorf("target %s: %w", tgt.path, err))
	}
	tgt.elf = ef
	tgt.bias -= ef.MinVaddr
	if err := checkBuildID(obj, ef, tgt.path, o); err != nil {
		return nil, err
	}
	p := &prepared{pid: pid, obj: obj, plan: plan, tgt: tgt, maps: maps, mods: e.frameModules(pid, maps), uuid: o.UUID}
	for _, f := range obj.Funcs {
		old, err := oldFunction(obj, f, ef, tgt.path)
		if err != nil {
			return nil, err
		}
		if old.room < jmpRel32 {
			return nil, fmt.Errorf("function %q is %d bytes, shorter than a %d-byte jump", f.OldName, old.size, jmpRel32)
		}
		old.addr += tgt.bias
		p.funcs = append(p.funcs, old)
	}
	p.res = &resolver{e: e, pid: pid, obj: obj, tgt: tgt, maps: maps}
	if err := p.res.resolveAll(obj); err != nil {
		return nil, err
	}
	return p, nil
}

// oldFunction finds the function f replaces, at its link-time address: from the offset
// the builder recorded (checked against the loaded segments of the mapped file), else,
// for a hand-written patch, by name in the target's symbol tables.
func oldFunction(obj *patchobj.Object, f patchobj.Func, ef *symbols.ELF, path string) (oldFunc, error) {
	if obj.SelfContained() {
		off, _ := obj.FuncOffset(f) // patchobj.Parse checked that every function has one
		if !ef.Covers(off.Value, off.Room, true) {
			return oldFunc{}, fmt.Errorf("function %q: recorded offset %#x (%d bytes) is outside the executable segments of %s: the patch does not fit this binary",
				f.OldName, off.Value, off.Room, path)
		}
		return oldFunc{name: f.OldName, pos: f.OldPos, addr: off.Value, size: off.Size, room: off.Room}, nil
	}
	s, err := ef.LookupFunc(f.OldName, f.OldPos)
	if err != nil {
		return oldFunc{}, fmt.Errorf("function %q in %s: %w%s", f.OldName, path, err, debugHint(ef, path, err))
	}
	room := s.Size
	if s.Size < jmpAbs {
		room = max(s.Size, roomAfter(ef, s))
	}
	return oldFunc{name: f.OldName, pos: f.OldPos, addr: s.Value, size: s.Size, room: room}, nil
}

// debugHint says what to install when a lookup failed because the target is stripped
// and its separate debuginfo was not found.
func debugHint(ef *symbols.ELF, path string, err error) string {
	if !errors.Is(err, symbols.ErrNotFound) || ef.HasSymtab() {
		return ""
	}
	return fmt.Sprintf(" (%s is stripped and no debuginfo with build-id %x was found: install its -debuginfo package)", path, ef.BuildID)
}

func checkBuildID(obj *patchobj.Object, ef *symbols.ELF, path string, o Options) error {
	if obj.TargetBuildID == nil {
		if !o.Force {
			return fmt.Errorf("%w: the patch records no target build-id; use --force to patch %s anyway", ErrBuildID, path)
		}
		if o.Warn != nil {
			o.Warn(fmt.Sprintf("the patch records no target build-id; patching %s without checking it", path))
		}
		return nil
	}
	if !bytes.Equal(obj.TargetBuildID, ef.BuildID) {
		return fmt.Errorf("%w: %s has build-id %x, the patch was built for %x", ErrBuildID, path, ef.BuildID, obj.TargetBuildID)
	}
	return nil
}

// gone reports whether pid has exited: it no longer exists, or only zombie threads
// are left to reap. (A zombie group leader whose other threads run is alive.)
func gone(pid int) bool {
	tids, err := proc.Threads(pid)
	if err != nil {
		return proc.IsGone(err)
	}
	for _, tid := range tids {
		if st, err := proc.ThreadState(pid, tid); err == nil && st != 'Z' && st != 'X' {
			return false
		}
	}
	return true
}

// exitedOr returns ErrExited when pid has exited, else err. A process that has
// exited but is not reaped yet (a zombie) has no mappings and no executable, so the
// target looks missing; one still exiting has lost its mappings but is not a zombie
// yet: when dying says the error looks like that, it waits a moment for the end.
func exitedOr(pid int, dying bool, err error) error {
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		if gone(pid) {
			return fmt.Errorf("pid %d: %w", pid, ptrace.ErrExited)
		}
		if !dying || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exited(pid int, err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("pid %d: %w", pid, ptrace.ErrExited)
	}
	return err
}

// testHookStopped, when set by a test, runs right after the process was stopped.
var testHookStopped func(pid int)

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

func (e *Engine) patch(t *ptrace.Tracer, pid int, obj *patchobj.Object, o Options) (Stats, error) {
	p, err := e.prepare(pid, obj, o)
	if err != nil {
		return Stats{}, err
	}
	refresh := func(try int) error {
		if try == 1 {
			return nil // prepare just read the mappings
		}
		maps, err := proc.Maps(pid)
		if err != nil {
			return exited(pid, err)
		}
		p.maps, p.res.maps = maps, maps
		p.mods = e.frameModules(pid, maps)
		return nil
	}
	return e.frozen(t, pid, o, refresh, p.apply)
}

// frozen stops every thread of pid, runs op and resumes the process. While op
// reports a busy function it lets the process run, waits (doubling the wait each
// time) and tries again, up to o.retries() times. before runs ahead of each try,
// with the process running.
func (e *Engine) frozen(t *ptrace.Tracer, pid int, o Options, before func(try int) error, op func(*ptrace.Process) error) (Stats, error) {
	var st Stats
	delay := o.delay()
	for try := 1; ; try++ {
		st.Tries = try
		if err := before(try); err != nil {
			return st, err
		}
		var busy error
		err := t.Do(func() error {
			start := time.Now()
			pr, err := t.Attach(pid)
			if err != nil {
				return fmt.Errorf("stop pid %d: %w", pid, err)
			}
			if testHookStopped != nil {
				testHookStopped(pid)
			}
			stopped := time.Now()
			err = op(pr)
			done := time.Now()
			if derr := pr.Detach(); derr != nil && err == nil {
				err = fmt.Errorf("resume pid %d: %w", pid, derr)
			}
			st.Freeze += time.Since(start)
			st.Stop += stopped.Sub(start)
			st.Work += done.Sub(stopped)
			if errors.Is(err, ErrBusy) {
				busy, err = err, nil
			}
			return err
		})
		if err != nil {
			return st, err
		}
		if busy == nil {
			return st, nil
		}
		if try >= o.retries() {
			return st, fmt.Errorf("%w after %d tries", busy, try)
		}
		time.Sleep(delay)
		delay *= 2
	}
}

// apply is the critical section: every thread of the process is stopped.
//
// The patch goes in as one step (see commit.go): header, jump table, code and
// data are written first, with the header marked pending; then one injected
// run makes the data writable and, through the process's own /proc/self/mem,
// writes every jump and finally clears the pending mark. That run completes
// even if this tool dies once it started, and a pending header left by a tool
// that died earlier is rolled back before anything else.
func (p *prepared) apply(pr *ptrace.Process) error {
	applied, err := readHeaders(pr, p.maps)
	if err != nil {
		return err
	}
	if applied, err = repairPending(pr, applied); err != nil {
		return err
	}
	seq := uint64(1)
	for _, h := range applied {
		if h.UUID == p.uuid {
			return fmt.Errorf("%w: %s", ErrAlreadyApplied, h.UUID)
		}
		if h.Seq >= seq {
			seq = h.Seq + 1
		}
	}
	ranges := make([]busyRange, len(p.funcs))
	for i, f := range p.funcs {
		ranges[i] = busyRange{lo: f.addr, hi: f.addr + f.size, name: f.name}
	}
	maps, mods, err := stoppedMaps(pr, p.mods)
	if err != nil {
		return err
	}
	if err := checkThreads(pr, maps, mods, ranges); err != nil {
		return err
	}

	// One read for every function: the bytes a jump will overwrite, and the
	// padding after a function shorter than the jump.
	hdr := Header{UUID: p.uuid, Seq: seq, Bias: p.tgt.bias, Target: p.tgt.path, Pending: true}
	addrs, heads := make([]uint64, len(p.funcs)), make([][]byte, len(p.funcs))
	for i, f := range p.funcs {
		addrs[i], heads[i] = f.addr, make([]byte, min(f.room, maxJumpLen))
		hdr.Funcs = append(hdr.Funcs, HeaderFunc{Name: f.name, Pos: uint32(f.pos), Old: f.addr})
	}
	if err := pr.ReadMemv(addrs, heads); err != nil {
		return exited(p.pid, fmt.Errorf("read replaced functions: %w", err))
	}
	// The jump table (one entry per jump, then the one that clears the
	// pending mark) follows the header.
	tableOff := uint64(hdr.encodedSize())
	hdrSize := tableOff + uint64(len(p.funcs)+1)*ptrace.TableEntrySize
	hdrPages := roundUp(hdrSize, pageSize)
	textSize := hdrPages + roundUp(p.plan.TextSize, pageSize)
	total := textSize + roundUp(p.plan.DataSize, pageSize)
	if total > maxRegion {
		return fmt.Errorf("patch needs %d bytes of memory", total)
	}
	base, err := allocNear(pr, p.maps, p.tgt.lo, p.tgt.hi, total)
	if err != nil {
		return err
	}
	undo := func() { _, _ = pr.Syscall(unix.SYS_MUNMAP, base, total) }
	p.res.pr = pr
	img, err := p.plan.Link(base+hdrPages, p.res)
	p.res.pr = nil
	if err != nil {
		undo()
		return fmt.Errorf("link patch: %w", err)
	}
	if uint64(len(img.Text)) > textSize-hdrPages || (len(img.Data) > 0 && hdrPages+uint64(len(img.Text)) != textSize) ||
		uint64(len(img.Data)) > total-textSize {
		undo()
		return fmt.Errorf("link patch: image larger than planned")
	}
	jumps := make([]ptrace.Write, len(p.funcs))
	for i, f := range img.Funcs {
		old := p.funcs[i]
		if f.OldName != old.name {
			undo()
			return fmt.Errorf("link patch: function order differs (%q vs %q)", f.OldName, old.name)
		}
		hdr.Funcs[i].New, hdr.Funcs[i].NewSize = f.New, f.NewSize
		jumps[i] = ptrace.Write{Addr: old.addr, Data: jumpBytes(old.addr, f.New)}
		if err := checkRoom(old, originalHead(applied, old.addr, heads[i]), len(jumps[i].Data)); err != nil {
			undo()
			return err
		}
		hdr.Funcs[i].Orig = heads[i][:len(jumps[i].Data)]
	}
	hdr.Size, hdr.TextSize = total, textSize
	hb, err := hdr.Encode()
	if err != nil {
		undo()
		return err
	}
	jumps = append(jumps, ptrace.Write{Addr: base + headerStateOff, Data: make([]byte, 4)})
	hb = append(hb, encodeTable(jumps)...)
	writes := []ptrace.Write{{Addr: base, Data: hb}, {Addr: base + hdrPages, Data: img.Text}}
	dataAddr := base + textSize
	if len(img.Data) > 0 {
		writes = append(writes, ptrace.Write{Addr: dataAddr, Data: img.Data})
	}
	if err := pr.WriteMemv(writes); err != nil {
		undo()
		return exited(p.pid, fmt.Errorf("write patch: %w", err))
	}
	var first []ptrace.Op
	if total > textSize {
		first = append(first, ptrace.SyscallOp(unix.SYS_MPROTECT, dataAddr, total-textSize, unix.PROT_READ|unix.PROT_WRITE))
	}
	if err := commitTable(pr, base+tableOff, jumps, first, nil); err != nil {
		// Roll back whatever went in: the header says what that can be.
		if h, rerr := readHeaderAt(pr, base); rerr == nil && !h.Pending {
			return nil // the commit completed after all
		} else if rerr == nil {
			_ = rollback(pr, h)
		}
		return exited(p.pid, fmt.Errorf("commit patch: %w", err))
	}
	return nil
}

// originalHead returns the bytes at addr as they were before any applied patch: a
// function already replaced starts with that patch's jump, which may have spilled into
// the padding the room check looks at; the first patch's saved bytes say what was there.
func originalHead(applied []*Header, addr uint64, head []byte) []byte {
	var first []byte
	firstSeq := uint64(0)
	for _, h := range applied {
		for _, f := range h.Funcs {
			if f.Old == addr && (first == nil || h.Seq < firstSeq) {
				first, firstSeq = f.Orig, h.Seq
			}
		}
	}
	if first == nil {
		return head
	}
	out := append([]byte(nil), head...)
	copy(out, first)
	return out
}

// checkRoom makes sure a jump of n bytes fits at old: inside the function, or
// spilling only into the alignment padding that follows it. head holds the bytes
// at the function's address, up to the next symbol.
func checkRoom(old oldFunc, head []byte, n int) error {
	if uint64(n) <= old.size {
		return nil
	}
	short := fmt.Errorf("function %q is %d bytes, shorter than a %d-byte jump", old.name, old.size, n)
	if n > len(head) {
		return short
	}
	if err := isPadding(head[old.size:], n-int(old.size)); err != nil {
		return fmt.Errorf("%w (%v)", short, err)
	}
	return nil
}

// allocNear maps size bytes r-x within ±2 GiB of [lo, hi) so that 5-byte jumps and the
// patch's PC-relative references reach the target.
func allocNear(pr *ptrace.Process, maps []proc.Mapping, lo, hi, size uint64) (uint64, error) {
	for _, hint := range holesNear(maps, lo, hi, size) {
		addr, err := pr.Syscall(unix.SYS_MMAP, hint, size, unix.PROT_READ|unix.PROT_EXEC,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
		if errors.Is(err, ptrace.ErrRan) {
			// A thread ran while the others were stopped: the safety check no
			// longer holds. Give the memory back and try again later.
			if int64(addr) > 0 {
				_, _ = pr.Syscall(unix.SYS_MUNMAP, addr, size)
			}
			return 0, fmt.Errorf("%w: %w", ErrBusy, err)
		}
		if err == nil {
			if addr != hint {
				// Old kernels ignore MAP_FIXED_NOREPLACE and treat it as a hint.
				_, _ = pr.Syscall(unix.SYS_MUNMAP, addr, size)
				continue
			}
			return addr, nil
		}
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		return 0, fmt.Errorf("map patch memory: %w", err)
	}
	return 0, fmt.Errorf("map patch memory: no free %d bytes within reach of %#x-%#x", size, lo, hi)
}

// holesNear lists candidate addresses of free gaps within reach of [lo, hi), nearest first.
func holesNear(maps []proc.Mapping, lo, hi, size uint64) []uint64 {
	const reach = 1<<31 - 1<<20
	const guard = 16 * pageSize
	var minAddr uint64
	if hi > reach {
		minAddr = hi - reach
	}
	maxEnd := lo + reach
	minAddr = max(minAddr, 1<<20)
	sorted := append([]proc.Mapping(nil), maps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Start < sorted[j].Start })
	type cand struct{ addr, dist uint64 }
	var cands []cand
	prevEnd := uint64(0)
	for i := 0; i <= len(sorted); i++ {
		gapLo, gapHi := prevEnd, uint64(1<<47)
		if i < len(sorted) {
			gapHi = sorted[i].Start
			prevEnd = max(prevEnd, sorted[i].End)
		}
		if gapHi <= gapLo+size+2*guard {
			continue
		}
		// nearest end of the gap to the target, inside reach
		if gapHi <= lo {
			a := gapHi - guard - size
			a &^= pageSize - 1
			if a >= minAddr && a >= gapLo+guard {
				cands = append(cands, cand{a, lo - a})
			}
		} else if gapLo >= hi {
			a := roundUp(gapLo+guard, pageSize)
			if a+size <= maxEnd && a+size+guard <= gapHi {
				cands = append(cands, cand{a, a - hi})
			}
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].dist < cands[j].dist })
	out := make([]uint64, 0, len(cands))
	for _, c := range cands {
		out = append(out, c.addr)
	}
	return out
}

func roundUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// jumpBytes encodes a jump from at to dest: jmp rel32 when in reach, else
// jmp *0(%rip) followed by the absolute address.
func jumpBytes(at, dest uint64) []byte {
	rel := int64(dest) - int64(at+jmpRel32)
	if rel == int64(int32(rel)) {
		b := make([]byte, jmpRel32)
		b[0] = 0xe9
		binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
		return b
	}
	b := make([]byte, jmpAbs)
	b[0], b[1] = 0xff, 0x25
	binary.LittleEndian.PutUint64(b[6:], dest)
	return b
}

// busyRange is an address range no thread may be in, or return into.
type busyRange struct {
	lo, hi uint64
	name   string
}

// checkThreads implements the safety check described in the package doc.
func checkThreads(pr *ptrace.Process, maps []proc.Mapping, mods []unwind.Module, ranges []busyRange) error {
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].lo < ranges[j].lo })
	find := func(addr uint64) *busyRange {
		i := sort.Search(len(ranges), func(i int) bool { return ranges[i].hi > addr })
		if i < len(ranges) && ranges[i].lo <= addr {
			return &ranges[i]
		}
		return nil
	}
	tids := pr.Threads()
	addrs, stacks := make([]uint64, 0, len(tids)), make([][]byte, 0, len(tids))
	regs := make([]unix.PtraceRegs, 0, len(tids))
	owners := make([]int, 0, len(tids))
	for _, tid := range tids {
		r, err := pr.Regs(tid)
		if err != nil {
			return fmt.Errorf("registers of thread %d: %w", tid, err)
		}
		if br := find(r.Rip); br != nil {
			return fmt.Errorf("%w: function %q is running in thread %d", ErrBusy, br.name, tid)
		}
		lo, hi := stackBounds(maps, r.Rsp)
		if hi <= lo {
			return fmt.Errorf("thread %d: stack pointer %#x is in no mapping; cannot check its stack", tid, r.Rsp)
		}
		addrs, stacks, owners = append(addrs, lo), append(stacks, make([]byte, hi-lo)), append(owners, tid)
		regs = append(regs, r)
	}
	// One read for every thread's live stack.
	if err := pr.ReadMemv(addrs, stacks); err != nil {
		return fmt.Errorf("thread stacks: %w", err)
	}
	for i, b := range stacks {
		if r, where := busyFrame(regs[i], b, addrs[i], mods, find); r != nil {
			return fmt.Errorf("%w: function %q is busy in thread %d (%s)", ErrBusy, r.name, owners[i], where)
		}
	}
	return nil
}

// stackBounds returns the live part [sp, end of its mapping) of a thread's stack.
func stackBounds(maps []proc.Mapping, sp uint64) (uint64, uint64) {
	sp &^= 7
	for _, m := range maps {
		if sp >= m.Start && sp < m.End {
			return sp, m.End
		}
	}
	return 0, 0
}

// memReader reads a process's memory: a stopped *ptrace.Process, or ptrace.Remote
// for a running one.
type memReader interface {
	ReadMem(addr uint64, buf []byte) error
}

// readHeaders finds the patch headers in the process: anonymous r-x mappings that
// start with the header magic.
func readHeaders(pr memReader, maps []proc.Mapping) ([]*Header, error) {
	var out []*Header
	prefix := make([]byte, headerFixedSize)
	for _, m := range maps {
		if m.Inode != 0 || m.Path != "" || !strings.HasPrefix(m.Perms, "r-x") || m.End-m.Start < pageSize {
			continue
		}
		if err := pr.ReadMem(m.Start, prefix); err != nil || string(prefix[:8]) != headerMagic {
			continue
		}
		n := int(binary.LittleEndian.Uint32(prefix[12:]))
		textSize := binary.LittleEndian.Uint64(prefix[80:])
		if n <= 0 || textSize < headerFixedSize || textSize > m.End-m.Start {
			continue
		}
		size := min(textSize, 1<<20)
		b := make([]byte, size)
		if err := pr.ReadMem(m.Start, b); err != nil {
			return nil, fmt.Errorf("read patch header at %#x: %w", m.Start, err)
		}
		h, err := decodeHeader(b)
		if err != nil {
			return nil, fmt.Errorf("patch header at %#x: %w", m.Start, err)
		}
		h.Base = m.Start
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

// resolver binds the patch's undefined symbols for one process. Everything is looked
// up before the process is stopped (prepare); only IFUNC symbols need the stopped
// process, whose resolver function is called in it to learn the implementation.
type resolver struct {
	e     *Engine
	pid   int
	obj   *patchobj.Object
	tgt   *target
	maps  []proc.Mapping
	libs  []*lib
	syms  map[patchobj.TargetSym]resolved
	pr    *ptrace.Process // set while the process is stopped
	ifunc map[uint64]uint64
}

type resolved struct {
	addr   uint64
	isFunc bool
	ifunc  bool
	err    error
}

type lib struct {
	elf  *symbols.ELF
	bias uint64
}

// resolveAll looks up every undefined symbol of obj; a missing strong symbol is an
// error now, before the process is touched.
func (r *resolver) resolveAll(obj *patchobj.Object) error {
	r.syms = map[patchobj.TargetSym]resolved{}
	// Only what a loaded section relocates against is needed: gcc also declares
	// symbols nothing uses (_GLOBAL_OFFSET_TABLE_ in objects with TLS accesses).
	used := map[uint32]bool{}
	for _, sec := range obj.Sections {
		if sec != nil && sec.Load {
			for _, rel := range sec.Relocs {
				used[rel.Sym] = true
			}
		}
	}
	for i, s := range obj.Symbols {
		if s.Defined() || s.Name == "" || s.Type == elf.STT_TLS || !used[uint32(i)] {
			continue
		}
		ts := obj.Target(s.Name)
		if _, ok := r.syms[ts]; ok {
			continue
		}
		res := r.lookup(ts.Name, ts.Pos)
		if res.err != nil && s.Bind != elf.STB_WEAK {
			return res.err
		}
		r.syms[ts] = res
	}
	return nil
}

// Resolve is layout.Resolver.
func (r *resolver) Resolve(name string, pos uint64) (uint64, bool, error) {
	res, ok := r.syms[patchobj.TargetSym{Name: name, Pos: pos}]
	if !ok {
		res = r.lookup(name, pos)
	}
	if res.err != nil || !res.ifunc {
		return res.addr, res.isFunc, res.err
	}
	if a, ok := r.ifunc[res.addr]; ok {
		return a, true, nil
	}
	if r.pr == nil {
		return 0, false, fmt.Errorf("symbol %q is an IFUNC and the process is not stopped", name)
	}
	impl, err := r.pr.Call(res.addr)
	if err != nil {
		return 0, false, fmt.Errorf("resolve IFUNC %q: %w", name, err)
	}
	if r.ifunc == nil {
		r.ifunc = map[uint64]uint64{}
	}
	r.ifunc[res.addr] = impl
	return impl, true, nil
}

// lookup finds a target symbol: a self-contained patch's recorded offset, else (for a
// hand-written patch) the target ELF's symtab; then the target's PLT for functions, so
// that calls keep the process's own symbol binding; then every other mapped ELF's
// dynsym. A self-contained patch never searches the target's own symbol tables: what
// the builder did not resolve is not defined in the target.
func (r *resolver) lookup(name string, pos uint64) resolved {
	if r.obj.SelfContained() {
		if off, ok := r.obj.SymbolOffset(patchobj.TargetSym{Name: name, Pos: pos}); ok {
			if !r.tgt.elf.Covers(off.Value, off.Size, false) {
				return resolved{err: fmt.Errorf("symbol %q: recorded offset %#x (%d bytes) is outside the loaded segments of %s: the patch does not fit this binary",
					name, off.Value, off.Size, r.tgt.path)}
			}
			if off.Type == elf.STT_OBJECT && pos == 0 {
				if a, ok := r.boundData(name); ok {
					return resolved{addr: a}
				}
			}
			return resolved{addr: r.tgt.bias + off.Value, isFunc: isFuncType(off.Type), ifunc: off.Type == elf.STT_GNU_IFUNC}
		}
		return r.dynamic(name, pos)
	}
	s, err := r.tgt.elf.Lookup(name, pos)
	if err == nil && s.Section != elf.SHN_UNDEF && s.Type != elf.STT_TLS {
		if s.Section == elf.SHN_ABS {
			return resolved{addr: s.Value}
		}
		if s.Type == elf.STT_OBJECT && pos == 0 {
			if a, ok := r.boundData(name); ok {
				return resolved{addr: a}
			}
		}
		return resolved{addr: r.tgt.bias + s.Value, isFunc: isFuncType(s.Type), ifunc: s.Type == elf.STT_GNU_IFUNC}
	}
	if err != nil && !errors.Is(err, symbols.ErrNotFound) {
		return resolved{err: err}
	}
	return r.dynamic(name, pos)
}

// boundData returns where a shared library's exported variable really is in the
// process: the library reaches its own exported data through a GOT slot, which the
// dynamic linker fills with the executable's copy when the executable copied the
// variable (a copy relocation), or with another definition that interposes. The
// patch must use what the library uses. ok is false for an executable target and for
// a variable the library reaches directly.
func (r *resolver) boundData(name string) (uint64, bool) {
	if r.tgt.elf.Type != elf.ET_DYN || r.isMainExe() {
		return 0, false
	}
	slot, ok := r.tgt.elf.GOT(name)
	if !ok {
		return 0, false
	}
	a, err := r.readWord(r.tgt.bias + slot)
	return a, err == nil && a != 0
}

// readWord reads a GOT slot of the process, which the dynamic linker filled: through
// the stopped process when there is one, else without stopping it.
func (r *resolver) readWord(addr uint64) (uint64, error) {
	var b [8]byte
	var mem interface{ ReadMem(uint64, []byte) error } = ptrace.Remote{Pid: r.pid}
	if r.pr != nil {
		mem = r.pr
	}
	if err := mem.ReadMem(addr, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// dynamic finds a symbol the target does not define: its PLT entry, else the
// definition a mapped library exports.
func (r *resolver) dynamic(name string, pos uint64) resolved {
	if pos != 0 {
		return resolved{err: fmt.Errorf("symbol %q (position %d): %w in %s", name, pos, symbols.ErrNotFound, r.tgt.path)}
	}
	if plt, ok := r.tgt.elf.PLT(name); ok {
		return resolved{addr: r.tgt.bias + plt, isFunc: true}
	}
	r.loadLibs()
	for _, l := range r.libs {
		if s, ok := l.elf.Dynamic(name); ok {
			return resolved{addr: l.bias + s.Value, isFunc: isFuncType(s.Type), ifunc: s.Type == elf.STT_GNU_IFUNC}
		}
	}
	notFound := fmt.Errorf("symbol %q: %w in %s or the libraries it maps", name, symbols.ErrNotFound, r.tgt.path)
	return resolved{err: fmt.Errorf("%w%s", notFound, debugHint(r.tgt.elf, r.tgt.path, notFound))}
}

func isFuncType(t elf.SymType) bool { return t == elf.STT_FUNC || t == elf.STT_GNU_IFUNC }

// TLSOffset resolves a thread-local variable of the executable, for the static TLS
// models (TPOFF32, GOTTPOFF) that code of an executable uses.
func (r *resolver) TLSOffset(name string, pos uint64) (int64, error) {
	if r.tgt.elf.Type != elf.ET_EXEC && !r.isMainExe() {
		return 0, fmt.Errorf("TLS variable %q: the static TLS models reach only the executable's variables; "+
			"code of a shared library reaches its own through __tls_get_addr (TLSGD, TLSLD), as -fPIC compiles it", name)
	}
	s, err := r.tlsVar(name, pos)
	if err != nil {
		return 0, err
	}
	return r.tgt.elf.TPOffset(s)
}

// TLSModule resolves a thread-local variable for the dynamic TLS models: the module id
// of the target (1 for the executable; for a library, what the dynamic linker wrote
// into the library's own GOT for its own TLS references) and the variable's offset in
// the module's block.
func (r *resolver) TLSModule(name string, pos uint64) (uint64, uint64, error) {
	s, err := r.tlsVar(name, pos)
	if err != nil {
		return 0, 0, err
	}
	if r.tgt.elf.Type == elf.ET_EXEC || r.isMainExe() {
		return 1, s.Value, nil
	}
	slot := r.tgt.elf.TLSModuleSlot
	if slot == 0 {
		return 0, 0, fmt.Errorf("TLS variable %q: %s has no reference to its own TLS module (R_X86_64_DTPMOD64) to learn its module id from", name, r.tgt.path)
	}
	mod, err := r.readWord(r.tgt.bias + slot)
	if err != nil {
		return 0, 0, fmt.Errorf("TLS module id of %s: %w", r.tgt.path, err)
	}
	if mod == 0 {
		return 0, 0, fmt.Errorf("TLS variable %q: the TLS module id of %s is not set in the process", name, r.tgt.path)
	}
	return mod, s.Value, nil
}

// tlsVar finds a thread-local variable of the target: its offset in the target's TLS
// block, from the patch's recorded offsets or, for a hand-written patch, the symtab.
func (r *resolver) tlsVar(name string, pos uint64) (symbols.Symbol, error) {
	if r.obj.SelfContained() {
		off, ok := r.obj.SymbolOffset(patchobj.TargetSym{Name: name, Pos: pos})
		if !ok {
			return symbols.Symbol{}, fmt.Errorf("TLS variable %q: %w: the patch records no offset for it", name, symbols.ErrNotFound)
		}
		if tls := r.tgt.elf.TLS; tls == nil || off.Value+off.Size > tls.Memsz {
			return symbols.Symbol{}, fmt.Errorf("TLS variable %q: recorded offset %#x (%d bytes) is outside the TLS block of %s: the patch does not fit this binary",
				name, off.Value, off.Size, r.tgt.path)
		}
		return symbols.Symbol{Name: name, Value: off.Value, Size: off.Size, Type: off.Type}, nil
	}
	s, err := r.tgt.elf.Lookup(name, pos)
	if err != nil {
		return symbols.Symbol{}, fmt.Errorf("TLS variable %q: %w", name, err)
	}
	if s.Type != elf.STT_TLS {
		return symbols.Symbol{}, fmt.Errorf("symbol %q is a %v symbol, not thread-local", name, s.Type)
	}
	return s, nil
}

func (r *resolver) isMainExe() bool {
	exe, err := proc.Exe(r.pid)
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == r.tgt.path
}

func (r *resolver) loadLibs() {
	if r.libs != nil {
		return
	}
	r.libs = []*lib{}
	seen := map[[2]uint64]bool{{r.tgt.dev, r.tgt.inode}: true}
	for _, m := range r.maps {
		if m.Offset != 0 || m.Inode == 0 || seen[[2]uint64{m.Dev, m.Inode}] || !strings.HasPrefix(m.Path, "/") {
			continue
		}
		seen[[2]uint64{m.Dev, m.Inode}] = true
		ef, err := r.e.elfs.Open(proc.MappedFile(r.pid, m))
		if err != nil {
			continue // not an ELF (locale archive, data files)
		}
		r.libs = append(r.libs, &lib{elf: ef, bias: m.Start - ef.MinVaddr})
	}
}
