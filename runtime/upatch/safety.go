package upatch

import (
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/unwind"
)

// The safety check: no thread runs, or will return into, what is replaced.

// busyRange is an address range no thread may be in, or return into.
type busyRange struct {
	lo, hi uint64
	name   string
}

// checkThreads implements the safety check described in the package doc. A busy
// process gives a *busyError naming the first busy thread, with where every busy
// thread leaves its busy frames when that is known (see wait.go).
//
// For unpatch, outer is the whole patch, which holds the ranges (the new functions,
// named first when a thread is in one), and entries are the replaced functions: a
// direct call of one leads into the patch, whose code has no call-frame information
// (see callSites).
func checkThreads(pr *ptrace.Process, vm *vmas, mods []unwind.Module, ranges []busyRange, outer *busyRange, entries map[uint64]bool) error {
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].lo < ranges[j].lo })
	find := func(addr uint64) *busyRange {
		i := sort.Search(len(ranges), func(i int) bool { return ranges[i].hi > addr })
		if i < len(ranges) && ranges[i].lo <= addr {
			return &ranges[i]
		}
		if outer != nil && addr >= outer.lo && addr < outer.hi {
			return outer
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
		lo, hi := stackBounds(vm, r.Rsp)
		if hi <= lo {
			if br := find(r.Rip); br != nil {
				return &busyError{msg: fmt.Sprintf("%v: function %q is running in thread %d", ErrBusy, br.name, tid), tid: tid, name: br.name,
					stuck: "its stack pointer is in no mapping"}
			}
			return fmt.Errorf("thread %d: stack pointer %#x is in no mapping; cannot check its stack", tid, r.Rsp)
		}
		addrs, stacks, owners = append(addrs, lo), append(stacks, make([]byte, hi-lo)), append(owners, tid)
		regs = append(regs, r)
	}
	// One read for every thread's live stack.
	if err := pr.ReadMemv(addrs, stacks); err != nil {
		return fmt.Errorf("thread stacks: %w", err)
	}
	var sites *callSites
	if entries != nil {
		sites = &callSites{code: pr, entries: entries, mods: mods}
	}
	sigs := &sigreturns{code: pr, mods: mods}
	sigs.prefetch(framePCs(regs, addrs, stacks, mods))
	check := &frameCheck{mods: mods, find: find, sites: sites, sigs: sigs}
	// A stack a signal frame says was interrupted (a handler on a sigaltstack) is
	// read only when one is found, from the stack pointer to the end of its mapping.
	readStack := func(sp uint64) (*stackSeg, error) {
		lo, hi := stackBounds(vm, sp)
		if hi <= lo {
			return nil, fmt.Errorf("stack pointer %#x is in no mapping", sp)
		}
		s := &stackSeg{lo: lo, b: make([]byte, hi-lo)}
		if err := pr.ReadMem(lo, s.b); err != nil {
			return nil, fmt.Errorf("read the stack at %#x: %w", lo, err)
		}
		return s, nil
	}
	var be *busyError
	var unchecked error
	for i, b := range stacks {
		ts := &threadStacks{segs: []*stackSeg{{lo: addrs[i], b: b}}, read: readStack}
		bf := check.safeBusyFrame(regs[i], ts)
		if bf.hit == nil {
			if bf.unchecked != "" && unchecked == nil {
				unchecked = fmt.Errorf("thread %d: %s; cannot check its frames", owners[i], bf.unchecked)
			}
			continue
		}
		if be == nil {
			be = &busyError{tid: owners[i], name: bf.hit.name}
			if bf.running {
				be.msg = fmt.Sprintf("%v: function %q is running in thread %d", ErrBusy, bf.hit.name, owners[i])
			} else {
				be.msg = fmt.Sprintf("%v: function %q is busy in thread %d (%s)", ErrBusy, bf.hit.name, owners[i], bf.where)
			}
		}
		if bf.stuck != "" {
			if be.stuck == "" {
				be.stuck = fmt.Sprintf("thread %d: %s", owners[i], bf.stuck)
			}
			continue
		}
		be.waits = append(be.waits, waitPoint{tid: owners[i], slot: bf.leave.PCAt, ret: bf.leave.PC, name: bf.hit.name})
	}
	if be != nil {
		// A thread left unchecked is checked again after any wait for the busy ones.
		return be
	}
	return unchecked
}

// stackBounds returns the live part [sp, end of its mapping) of a thread's stack.
func stackBounds(vm *vmas, sp uint64) (uint64, uint64) {
	sp &^= 7
	if m, ok := vm.at(sp); ok {
		return sp, m.End
	}
	return 0, 0
}
