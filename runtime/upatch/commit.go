package upatch

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/ptrace"
)

// Committing a patch as one step.
//
// A patch replaces several functions, each by a jump written into the
// target's read-only text, so it cannot be switched on by a single store. What
// makes it all or nothing is who writes the jumps: one injected run (see
// runtime/ptrace) in which a thread of the process itself opens its
// /proc/self/mem, writes every jump from a table and last clears the pending
// mark of the patch's header. Once the tool started that run, the thread
// completes it whether or not the tool is still alive; before it started it,
// no jump is written. The data pages are made writable in the same run, before
// the jumps, so the new code never runs with read-only data.
//
// The header records what is in: written with its pending mark set, the mark
// cleared by the last write of the commit. A pending header therefore means a
// tool stopped between writing the patch and committing it (or, in the
// fallback below, in the middle of the commit). Every run that stops the
// process rolls such a patch back first (its original bytes put back, its
// memory unmapped), in one injected run too, so it is entirely out.
//
// Unpatch is the same run in the other direction: original bytes from the
// header's function table, then munmap of the patch, chained to the writes'
// success.
//
// Fallback: a process that cannot open its own /proc/self/mem (no /proc in its
// mount namespace, a seccomp filter) gets the same writes from the tool, in the
// same order, with the pending mark cleared last; a tool killed in the middle
// leaves a pending header, which the next run rolls back.

// encodeTable lays out writes as a table for ptrace.WriteTableOp.
func encodeTable(ws []ptrace.Write) []byte {
	b := make([]byte, len(ws)*ptrace.TableEntrySize)
	for i, w := range ws {
		e := b[i*ptrace.TableEntrySize:]
		binary.LittleEndian.PutUint64(e, w.Addr)
		binary.LittleEndian.PutUint32(e[24:], uint32(len(w.Data)))
		copy(e[32:48], w.Data)
	}
	return b
}

// commitTable runs before, then writes entries (laid out as a table at
// table in the process) from inside the process, then runs after if all of
// that succeeded, in one injected run. A failure of before leaves everything
// unwritten.
func commitTable(pr *ptrace.Process, table uint64, entries []ptrace.Write, before, after []ptrace.Op) error {
	ops := make([]ptrace.Op, 0, len(before)+3+len(after))
	for _, o := range before {
		ops = append(ops, o.Critical())
	}
	nb := len(ops)
	ops = append(ops, ptrace.OpenSelfMem().IfOK(), ptrace.WriteTableOp(table, len(entries)), ptrace.CloseFDOp())
	for _, o := range after {
		ops = append(ops, o.IfOK())
	}
	res, err := pr.Run(ops...)
	if err != nil && (!errors.Is(err, ptrace.ErrRan) || len(res) != len(ops)) {
		return err
	}
	for i := 0; i < nb; i++ {
		if e := errnoOf(res[i]); e != nil {
			return e
		}
	}
	if errnoOf(res[nb+1]) == nil && errnoOf(res[nb]) == nil {
		for i := nb + 3; i < len(res); i++ {
			if e := errnoOf(res[i]); e != nil {
				return e
			}
		}
		return nil
	}
	// The process could not write through its own /proc/self/mem: write from
	// here, in the same order, then run what was chained to the writes.
	if err := pr.WriteMemv(entries); err != nil {
		return err
	}
	if len(after) > 0 {
		res, err := pr.Run(after...)
		if err != nil {
			return err
		}
		for _, r := range res {
			if e := errnoOf(r); e != nil {
				return e
			}
		}
	}
	return nil
}

func errnoOf(r uint64) error {
	if int64(r) < 0 && int64(r) > -4096 {
		return unix.Errno(-int64(r))
	}
	return nil
}

// removeRegion puts back the original bytes of every function h replaces and
// unmaps h's memory, as one step.
func removeRegion(pr *ptrace.Process, h *Header) error {
	restore := make([]ptrace.Write, len(h.Funcs))
	for i, f := range h.Funcs {
		restore[i] = ptrace.Write{Addr: f.Old, Data: f.Orig}
	}
	// The header's function entries have the layout of a write table.
	return commitTable(pr, h.Base+headerFixedSize, restore, nil,
		[]ptrace.Op{ptrace.SyscallOp(unix.SYS_MUNMAP, h.Base, h.Size)})
}

// rollback removes a pending patch. Its jumps may be all, partly or not at all
// written: the original bytes are what was there before it in every case (a
// function another patch replaced first has that patch's jump as original
// bytes), so writing them all back is right.
func rollback(pr *ptrace.Process, h *Header) error {
	if err := removeRegion(pr, h); err != nil {
		return fmt.Errorf("roll back the half-applied patch %s at %#x: %w", h.UUID, h.Base, err)
	}
	return nil
}

// repairPending rolls back every pending patch of headers and returns the
// others.
func repairPending(pr *ptrace.Process, headers []*Header) ([]*Header, error) {
	out := headers[:0:0]
	for _, h := range headers {
		if !h.Pending {
			out = append(out, h)
			continue
		}
		if err := rollback(pr, h); err != nil {
			return nil, exited(pr.Pid, err)
		}
	}
	return out, nil
}
