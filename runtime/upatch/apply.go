package upatch

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/layout"
	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// Applying a patch to one process: what is computed before it is stopped, and the
// critical section.

// prepared is everything computed for one process before it is stopped.
type prepared struct {
	pid  int
	obj  *patchobj.Object
	plan *layout.Plan
	tgt  *target
	maps []proc.Mapping
	mods []frameModule // call-frame tables of the mapped files, for the stack check
	area stackArea     // room for the stack copies of the check
	// modsC delivers mods: the tables are read while the rest is prepared and
	// staged (see framesLater).
	modsC <-chan []frameModule
	funcs []oldFunc
	res   *resolver
	uuid  string
	stage *staged     // the region written before the freeze, until committed
	query *proc.Query // mapping queries for the freeze; nil: it reads maps
}

// With several threads, the call-frame tables are read while the rest is prepared
// and staged (see framesLater).
func (e *Engine) prepare(pid int, obj *patchobj.Object, o Options, several bool) (*prepared, error) {
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
	modsC := e.framesLater(pid, maps, several)
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
	if err := e.checkInterposed(pid, maps, tgt, obj); err != nil {
		return nil, err
	}
	p := &prepared{pid: pid, obj: obj, plan: plan, tgt: tgt, maps: maps, modsC: modsC, uuid: o.UUID}
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
	// The shadow-variable table of patches already applied; the freeze checks it
	// is still there.
	if headers, err := readHeaders(ptrace.Remote{Pid: pid}, maps); err == nil {
		p.res.shadow = existingShadow(headers)
		if p.res.shadow == 0 {
			// one a patch removed with KeepShadow left for this one
			p.res.shadow = orphanShadow(ptrace.Remote{Pid: pid}, maps)
			p.res.adopted = p.res.shadow != 0
		}
	}
	if err := p.res.resolveAll(obj); err != nil {
		return nil, err
	}
	return p, nil
}

func (e *Engine) patch(t *ptrace.Tracer, pid int, obj *patchobj.Object, o Options) (Stats, error) {
	// With several threads the patch is staged with one of them stopped, out of the
	// freeze; a single thread would be stopped twice for nothing: the freeze stages.
	tids, err := proc.Threads(pid)
	several := err == nil && len(tids) > 1
	p, err := e.prepare(pid, obj, o, several)
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
	if several {
		if err := e.stage(t, p); err != nil {
			return Stats{}, err
		}
		p.area = getStackArea(len(tids))
		defer func() { putStackArea(p.area) }()
	}
	p.mods = <-p.modsC
	p.query = openQuery(pid)
	defer p.query.Close()
	st, err := e.frozen(t, pid, o, refresh, p.apply)
	if err != nil {
		e.unstage(t, p)
	}
	return st, err
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
	if r := p.res; r.usesShadow && !r.shadowNew {
		if in := existingShadow(applied); (r.adopted && (in != 0 || checkShadow(pr, r.shadow) != nil)) || (!r.adopted && in != r.shadow) {
			return fmt.Errorf("pid %d: the shadow-variable table at %#x went away or changed hands while the patch was prepared; try again", p.pid, r.shadow)
		}
	}
	ranges := make([]busyRange, len(p.funcs))
	for i, f := range p.funcs {
		ranges[i] = busyRange{lo: f.addr, hi: f.addr + f.size, name: f.name}
	}
	vm, mods, err := stoppedMaps(pr, p.mods, p.query)
	if err != nil {
		return err
	}
	// The target as found before the stop: an execve in between replaced it.
	if m, ok := vm.at(p.tgt.lo); !ok || m.Start != p.tgt.lo || m.Dev != p.tgt.dev || m.Inode != p.tgt.inode {
		return fmt.Errorf("pid %d: %s is no longer mapped at %#x (the process ran execve?); try again", p.pid, p.tgt.path, p.tgt.lo)
	}
	if err := checkThreads(pr, vm, mods, ranges, nil, nil, p.area); err != nil {
		return err
	}

	if p.stage == nil {
		if err := p.stageIn(pr); err != nil {
			return err
		}
	}
	// One read for every function: the bytes a jump will overwrite, and the
	// padding after a function shorter than the jump.
	st := p.stage
	addrs, heads := make([]uint64, len(p.funcs)), make([][]byte, len(p.funcs))
	for i, f := range p.funcs {
		addrs[i], heads[i] = f.addr, make([]byte, min(f.room, maxJumpLen))
	}
	if err := pr.ReadMemv(addrs, heads); err != nil {
		return exited(p.pid, fmt.Errorf("read replaced functions: %w", err))
	}
	hdr := st.hdr
	hdr.Seq = seq
	hdr.Funcs = append([]HeaderFunc(nil), st.hdr.Funcs...)
	for i, old := range p.funcs {
		n := len(st.jumps[i].Data)
		if err := checkRoom(old, originalHead(applied, old.addr, heads[i]), n); err != nil {
			return err
		}
		hdr.Funcs[i].Orig = heads[i][:n]
	}
	hb, err := hdr.Encode()
	if err != nil {
		return err
	}
	// The staged region is still writable: one process_vm_writev.
	if err := pr.WriteMem(st.base, hb); err != nil {
		return exited(p.pid, fmt.Errorf("write patch header: %w", err))
	}
	// Code and header become r-x (data stays rw-) in the same run as the jumps.
	first := []ptrace.Op{ptrace.SyscallOp(unix.SYS_MPROTECT, st.base, st.textSize, unix.PROT_READ|unix.PROT_EXEC)}
	if err := commitTable(pr, st.base+st.tableOff, st.jumps, first, nil); err != nil {
		// Roll back whatever went in: the header says what that can be.
		if h, rerr := readHeaderAt(pr, st.base); rerr == nil && !h.Pending {
			p.stage = nil
			return nil // the commit completed after all
		} else if rerr == nil && rollback(pr, h) == nil {
			p.stage = nil
		} else {
			p.res.shadowNew = false // the half-applied patch may use it: keep it
		}
		return exited(p.pid, fmt.Errorf("commit patch: %w", err))
	}
	p.stage = nil
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
