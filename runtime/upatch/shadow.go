package upatch

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/ptrace"
)

// The shadow-variable table: one per process, shared by every patch that uses the
// shadow API of upatch.h, so that data attached by one patch is seen by the next (a
// cumulative patch that replaces it included). The table is an anonymous rw- mapping
// near the target; each patch that uses it records its address in its header, which
// is how a later patch finds it and how unpatch knows when the last user is gone.
// The layout is struct upatch_shadow_table in runtime/include/upatch.h.

const (
	// shadowSymbol is the undefined symbol through which a patch reaches the table.
	shadowSymbol = "__upatch_shadow_table"
	shadowMagic  = 0x5744414853505555 // UPATCH_SHADOW_MAGIC
	// shadowTableHead is sizeof(struct upatch_shadow_table): 8 words, then the buckets.
	shadowTableHead = 64 + 4096*8
	shadowArena     = 4 << 20
	shadowSize      = (shadowTableHead + shadowArena + pageSize - 1) &^ (pageSize - 1)
)

// existingShadow returns the table a patch already applied to the process uses, 0 if
// none does.
func existingShadow(headers []*Header) uint64 {
	for _, h := range headers {
		if h.Shadow != 0 {
			return h.Shadow
		}
	}
	return 0
}

// shadowTable returns the table's address for the patch being linked: the process's
// own if it has one, else a new one mapped (and remembered, so that a failed apply
// unmaps it) near the target.
func (r *resolver) shadowTable() (uint64, error) {
	if r.shadow != 0 {
		return r.shadow, nil
	}
	if r.pr == nil {
		return 0, fmt.Errorf("symbol %s: the shadow-variable table is mapped only with the process stopped", shadowSymbol)
	}
	addr, err := allocNear(r.pr, r.maps, r.tgt.lo, r.tgt.hi, shadowSize)
	if err != nil {
		return 0, fmt.Errorf("shadow-variable table: %w", err)
	}
	var head [16]byte
	binary.LittleEndian.PutUint64(head[0:], shadowMagic)
	binary.LittleEndian.PutUint64(head[8:], shadowSize)
	if err := r.pr.WriteMem(addr, head[:]); err != nil {
		_, _ = r.pr.Syscall(unix.SYS_MUNMAP, addr, shadowSize)
		return 0, exited(r.pid, fmt.Errorf("write shadow-variable table: %w", err))
	}
	r.shadow, r.shadowNew = addr, true
	return addr, nil
}

// dropNewShadow unmaps a table mapped for a patch that did not go in.
func (r *resolver) dropNewShadow(pr *ptrace.Process) {
	if r.shadowNew {
		if _, err := pr.Syscall(unix.SYS_MUNMAP, r.shadow, shadowSize); err == nil {
			r.shadow, r.shadowNew = 0, false
		}
	}
}

// releaseShadow unmaps the table of a patch just removed when no patch left in the
// process uses it. The data's destructors are not run (see upatch.h). A table that
// does not look like one is left alone.
func releaseShadow(pr *ptrace.Process, removed *Header, left []*Header) error {
	if removed.Shadow == 0 {
		return nil
	}
	for _, h := range left {
		if h != removed && h.Shadow == removed.Shadow {
			return nil
		}
	}
	var head [16]byte
	if err := pr.ReadMem(removed.Shadow, head[:]); err != nil {
		return nil // already gone
	}
	size := binary.LittleEndian.Uint64(head[8:])
	if binary.LittleEndian.Uint64(head[0:]) != shadowMagic || size < shadowTableHead || size > 1<<30 || size%pageSize != 0 {
		return fmt.Errorf("shadow-variable table at %#x is corrupt: left mapped", removed.Shadow)
	}
	if _, err := pr.Syscall(unix.SYS_MUNMAP, removed.Shadow, size); err != nil {
		return fmt.Errorf("unmap shadow-variable table at %#x: %w", removed.Shadow, err)
	}
	return nil
}
