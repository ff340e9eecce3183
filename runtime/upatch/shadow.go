package upatch

import (
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
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

// orphanShadow finds a table left mapped by an unpatch with Options.KeepShadow, that
// no applied patch uses: an anonymous rw- mapping of the table's size that starts
// with its magic. 0 if there is none.
func orphanShadow(mem memReader, maps []proc.Mapping) uint64 {
	for _, m := range maps {
		if m.Inode != 0 || m.Path != "" || !strings.HasPrefix(m.Perms, "rw-") || m.End-m.Start != shadowSize {
			continue
		}
		if checkShadow(mem, m.Start) == nil {
			return m.Start
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

// Offsets in struct upatch_shadow_table and struct upatch_shadow_entry.
const (
	shadowLockOff    = 40
	shadowBucketsOff = 64
	shadowBuckets    = 4096
	entryNextOff     = 0
	entryDtorOff     = 32
	entrySize        = 48
)

// forgetDestructors clears, in every attached entry of the table, a destructor that
// lies in [lo, hi): the code of a patch being removed while the table stays for the
// others. Freeing that data later runs no destructor, where it would otherwise jump
// into unmapped memory. The process is stopped; a thread stopped while it holds the
// table's lock (inside another patch's shadow call) makes the process busy.
func forgetDestructors(pr *ptrace.Process, table, lo, hi uint64) error {
	head := make([]byte, shadowBucketsOff+8*shadowBuckets)
	if err := pr.ReadMem(table, head); err != nil {
		return fmt.Errorf("read shadow-variable table at %#x: %w", table, err)
	}
	le := binary.LittleEndian
	if le.Uint32(head[shadowLockOff:]) != 0 {
		return fmt.Errorf("%w: a thread holds the shadow-variable table's lock", ErrBusy)
	}
	size := le.Uint64(head[8:])
	limit := size / entrySize // more entries than fit: a loop in a corrupt chain
	var e [entrySize]byte
	for b := 0; b < shadowBuckets; b++ {
		off := le.Uint64(head[shadowBucketsOff+8*b:])
		for n := uint64(0); off != 0; n++ {
			if n > limit || off < uint64(len(head)) || off+entrySize > size {
				return fmt.Errorf("shadow-variable table at %#x: bucket %d is corrupt", table, b)
			}
			if err := pr.ReadMem(table+off, e[:]); err != nil {
				return fmt.Errorf("read shadow variable at %#x: %w", table+off, err)
			}
			if d := le.Uint64(e[entryDtorOff:]); d >= lo && d < hi {
				if err := pr.WriteMem(table+off+entryDtorOff, make([]byte, 8)); err != nil {
					return fmt.Errorf("clear destructor of shadow variable at %#x: %w", table+off, err)
				}
			}
			off = le.Uint64(e[entryNextOff:])
		}
	}
	return nil
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
