package upatch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/runtime/unwind"
)

// The stack check walks each thread's real frames with the call-frame information of
// the loaded files, so that a stale word left in a frame (a spilled register, a dead
// local) does not make a function look busy. Where a frame cannot be unwound (code
// without call-frame information, such as an earlier patch, or rules that need DWARF
// expressions, such as a signal frame), the rest of the stack from that frame up is
// scanned word by word, as before: conservative, never less safe.

// maxFrames bounds a walk; deeper stacks fall back to the word scan for the rest.
const maxFrames = 512

// frameTables caches the call-frame table of each file by device and inode (and size
// and time, so that a file replaced in place is read again).
type frameTables struct{ m sync.Map }

type tableKey struct {
	dev, ino      uint64
	size, mtimeNs int64
}

type tableEntry struct {
	once sync.Once
	t    *unwind.Table
	err  error
}

func (c *frameTables) get(path string) (*unwind.Table, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, err
	}
	k := tableKey{uint64(st.Dev), st.Ino, st.Size, st.Mtim.Nano()}
	v, _ := c.m.LoadOrStore(k, &tableEntry{})
	e := v.(*tableEntry)
	e.once.Do(func() {
		f, err := elfsafe.Open(path)
		if err != nil {
			e.err = err
			return
		}
		defer f.Close()
		e.err = elfsafe.Guard("call-frame information of "+path, func() error {
			var err error
			e.t, err = unwind.Parse(f.File)
			return err
		})
	})
	return e.t, e.err
}

// frameModules lists the executable files mapped by pid with their call-frame tables,
// read before the process is stopped. A file whose table cannot be read is left out:
// frames in it fall back to the word scan.
func (e *Engine) frameModules(pid int, maps []proc.Mapping) []unwind.Module {
	type span struct {
		lo, hi uint64
		m      proc.Mapping
	}
	byFile := map[[2]uint64]*span{}
	var order [][2]uint64
	var out []unwind.Module
	for _, m := range maps {
		if !m.Executable() {
			continue
		}
		if m.Path == "[vdso]" {
			if mod, ok := vdsoModule(pid, m); ok {
				out = append(out, mod)
			}
			continue
		}
		if m.Inode == 0 {
			continue
		}
		k := [2]uint64{m.Dev, m.Inode}
		if s := byFile[k]; s != nil {
			s.lo, s.hi = min(s.lo, m.Start), max(s.hi, m.End)
			continue
		}
		byFile[k] = &span{lo: m.Start, hi: m.End, m: m}
		order = append(order, k)
	}
	for _, k := range order {
		s := byFile[k]
		base, ok := fileBase(maps, k)
		if !ok {
			continue
		}
		t, err := e.frames.get(proc.MappedFile(pid, s.m))
		if err != nil || t.Len() == 0 {
			continue
		}
		out = append(out, unwind.Module{Lo: s.lo, Hi: s.hi, Bias: base - t.MinVaddr, Table: t})
	}
	return out
}

// fileBase is where file offset 0 of the file k is mapped.
func fileBase(maps []proc.Mapping, k [2]uint64) (uint64, bool) {
	for _, m := range maps {
		if m.Dev == k[0] && m.Inode == k[1] && m.Offset == 0 {
			return m.Start, true
		}
	}
	return 0, false
}

// vdsoModule reads the kernel's vDSO image from the process: it is small, and
// clock_gettime and friends run in it.
func vdsoModule(pid int, m proc.Mapping) (unwind.Module, bool) {
	if m.End-m.Start > 1<<20 {
		return unwind.Module{}, false
	}
	img := make([]byte, m.End-m.Start)
	if err := (ptrace.Remote{Pid: pid}).ReadMem(m.Start, img); err != nil {
		return unwind.Module{}, false
	}
	f, err := elfsafe.NewFile(bytes.NewReader(img))
	if err != nil {
		return unwind.Module{}, false
	}
	var t *unwind.Table
	if elfsafe.Guard("vDSO call-frame information", func() error {
		var err error
		t, err = unwind.Parse(f)
		return err
	}) != nil || t.Len() == 0 {
		return unwind.Module{}, false
	}
	return unwind.Module{Lo: m.Start, Hi: m.End, Bias: m.Start - t.MinVaddr, Table: t}, true
}

// busyFrame walks the frames of one thread whose stack bytes (from lo) were read, and
// returns the first address that find reports busy: a frame's instruction pointer or
// return address, or, above the first frame that cannot be unwound, any word.
func busyFrame(regs unix.PtraceRegs, stack []byte, lo uint64, mods []unwind.Module, find func(uint64) *busyRange) (*busyRange, string) {
	mem := func(addr uint64) (uint64, bool) {
		if addr < lo || addr%8 != 0 || addr-lo+8 > uint64(len(stack)) {
			return 0, false
		}
		return binary.LittleEndian.Uint64(stack[addr-lo:]), true
	}
	var hit *busyRange
	last := regs.Rsp
	err := unwind.Walk(unwind.NewRegs(regs.Rip, dwarfRegs(regs)), mods, mem, maxFrames, func(f unwind.Frame) bool {
		last = f.SP
		hit = find(f.PC)
		return hit == nil
	})
	if hit != nil {
		return hit, "in a frame"
	}
	if err == nil {
		return nil, ""
	}
	// Conservative from the frame that could not be unwound.
	start := max(last&^7, lo)
	for a := start; a+8 <= lo+uint64(len(stack)); a += 8 {
		w, _ := mem(a)
		if r := find(w); r != nil {
			return r, fmt.Sprintf("on its stack, above a frame that could not be unwound (%v)", err)
		}
	}
	return nil, ""
}

// dwarfRegs orders the general registers as DWARF numbers them on x86-64.
func dwarfRegs(r unix.PtraceRegs) [16]uint64 {
	return [16]uint64{r.Rax, r.Rdx, r.Rcx, r.Rbx, r.Rsi, r.Rdi, r.Rbp, r.Rsp,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15}
}
