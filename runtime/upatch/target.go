package upatch

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/symbols"
)

// Finding the patched ELF in a process, and the functions a patch replaces in it.

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
	// The several mappings of one file share the device and inode maps prints: the
	// file behind them is stat'ed once.
	confirmed := map[[2]uint64]bool{}
	for _, m := range maps {
		match := false
		if m.Path == name && binary != "" {
			match = true
		} else if ino != 0 && m.Inode == ino {
			// Same inode number: confirm the device too (and learn the kernel's spelling).
			k := [2]uint64{m.Dev, m.Inode}
			ok, seen := confirmed[k]
			if !seen {
				d, i, err := devIno(pid, m)
				ok = err == nil && d == dev && i == ino
				confirmed[k] = ok
			}
			if match = ok; match && binary != "" {
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
	_, st, err := proc.StatMapped(pid, m)
	if err != nil {
		return 0, 0, err
	}
	return uint64(st.Dev), st.Ino, nil
}

type oldFunc struct {
	name string
	pos  uint64
	addr uint64
	size uint64 // from the symbol table
	room uint64 // bytes up to the next symbol: size plus alignment padding
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
