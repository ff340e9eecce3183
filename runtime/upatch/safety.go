package upatch

import (
	"fmt"
	"sort"
	"sync"
	"unsafe"

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
//
// The copies of the stacks go into area as far as it reaches (see stackArea).
func checkThreads(pr *ptrace.Process, vm *vmas, mods []unwind.Module, ranges []busyRange, outer *busyRange, entries map[uint64]bool, area stackArea) error {
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
		var b []byte
		b, area = area.take(hi - lo)
		addrs, stacks, owners = append(addrs, lo), append(stacks, b), append(owners, tid)
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

// stackArea is memory for the copies of the thread stacks that the safety check
// reads in the freeze, allocated and written once before the process is stopped:
// fresh memory takes a page fault at its first write (a trap to the hypervisor on
// a virtual machine, tens of microseconds each there), which would otherwise come
// during the copy, one per page of every stack, while the process waits. A stack
// that does not fit gets memory of its own.
type stackArea []byte

// stackAreaPerThread is what the area sets aside for each thread: the live part of
// a stack, from its pointer to the end of the mapping, is a few KiB in most threads
// (the frames, then the thread's TLS and descriptor at the top).
const stackAreaPerThread = 16 << 10

// newStackArea returns an area for the stacks of n threads whose pages are
// present: populated with one madvise (MADV_POPULATE_WRITE, Linux 5.14), which
// costs one trap where writing a byte per page costs one fault per page; written
// where the kernel lacks it.
func newStackArea(n int) stackArea {
	a := make(stackArea, min(n, 256)*stackAreaPerThread)
	if len(a) == 0 {
		return a
	}
	// A slice this large is a span of its own, page aligned; the rounding only
	// guards against a runtime that would place it otherwise.
	start := (uintptr(unsafe.Pointer(&a[0])) + pageSize - 1) &^ (pageSize - 1)
	end := (uintptr(unsafe.Pointer(&a[0])) + uintptr(len(a))) &^ (pageSize - 1)
	if end > start {
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_POPULATE_WRITE)
		if errno == 0 {
			return a
		}
	}
	for i := 0; i < len(a); i += pageSize {
		a[i] = 1
	}
	return a
}

// stackAreas keeps areas between operations: an engine that patches again (a
// helper, a batch, the benchmarks) reuses memory whose pages are present rather
// than allocating and populating an area per operation, which also keeps the
// garbage collector, and its work during a freeze, away.
var stackAreas sync.Pool // of *stackArea

// getStackArea returns an area for n threads, a kept one if it is large enough.
func getStackArea(n int) stackArea {
	if a, ok := stackAreas.Get().(*stackArea); ok {
		if len(*a) >= min(n, 256)*stackAreaPerThread {
			return *a
		}
	}
	return newStackArea(n)
}

// putStackArea keeps a for the next operation; nothing may use it any more.
func putStackArea(a stackArea) {
	if len(a) > 0 {
		stackAreas.Put(&a)
	}
}

// take returns n bytes from the front of a, or fresh ones if a is too short, and
// what is left of a.
func (a stackArea) take(n uint64) ([]byte, stackArea) {
	if n <= uint64(len(a)) {
		return a[:n:n], a[n:]
	}
	return make([]byte, n), a
}

// stackBounds returns the live part [sp, end of its mapping) of a thread's stack.
func stackBounds(vm *vmas, sp uint64) (uint64, uint64) {
	sp &^= 7
	if m, ok := vm.at(sp); ok {
		return sp, m.End
	}
	return 0, 0
}
