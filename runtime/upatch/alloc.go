package upatch

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// Finding and mapping memory for a patch within reach of its target.

// allocNear maps size bytes rw- within ±2 GiB of [lo, hi) so that 5-byte jumps and the
// patch's PC-relative references reach the target.
func allocNear(pr *ptrace.Process, maps []proc.Mapping, lo, hi, size uint64) (uint64, error) {
	for _, hint := range holesNear(maps, lo, hi, size) {
		addr, err := pr.Syscall(unix.SYS_MMAP, hint, size, unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
		if errors.Is(err, ptrace.ErrRan) && int64(addr) > 0 && int64(addr) < 1<<47 && len(pr.Threads()) == 1 {
			// The one thread stopped for staging went back to its own code before
			// the tracer took it (a starved tracer): the mapping is made all the same.
			err = nil
		}
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
