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

// checkShadow makes sure the table the applied patches record is one: a patch
// linked against anything else would corrupt the process.
func checkShadow(mem memReader, addr uint64) error {
	var head [16]byte
	if err := mem.ReadMem(addr, head[:]); err != nil {
		return fmt.Errorf("shadow-variable table at %#x: %w", addr, err)
	}
	size := binary.LittleEndian.Uint64(head[8:])
	if binary.LittleEndian.Uint64(head[0:]) != shadowMagic || size < shadowTableHead || size > 1<<30 || size%pageSize != 0 {
		return fmt.Errorf("shadow-variable table at %#x is corrupt (magic %#x, size %d)", addr,
			binary.LittleEndian.Uint64(head[0:]), size)
	}
	return nil
}

// shadowTable returns the table's address for the patch being linked: the process's
// own if it has one, else a new one mapped (and remembered, so that a failed apply
// unmaps it) near the target.
func (r *resolver) shadowTable() (uint64, error) {
	if r.shadow != 0 {
		if !r.shadowNew {
			var mem memReader = ptrace.Remote{Pid: r.pid}
			if r.pr != nil {
				mem = r.pr
			}
			if err := checkShadow(mem, r.shadow); err != nil {
				return 0, err
			}
		}
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

// lastShadowUser returns the table the patch removed uses if no other patch of the
// process uses it, else 0: the table to unmap with it.
func lastShadowUser(removed *Header, all []*Header) uint64 {
	if removed.Shadow == 0 {
		return 0
	}
	for _, h := range all {
		if h != removed && h.Shadow == removed.Shadow {
			return 0
		}
	}
	return removed.Shadow
}

// releaseShadow unmaps the table at addr (checked by checkShadow), whose last user
// was just removed. The data's destructors are not run (see upatch.h).
func releaseShadow(pr *ptrace.Process, addr uint64) error {
	var head [16]byte
	if err := pr.ReadMem(addr, head[:]); err != nil {
		return fmt.Errorf("shadow-variable table at %#x: %w", addr, err)
	}
	size := binary.LittleEndian.Uint64(head[8:])
	if _, err := pr.Syscall(unix.SYS_MUNMAP, addr, size); err != nil {
		return fmt.Errorf("unmap shadow-variable table at %#x: %w", addr, err)
	}
	return nil
}
