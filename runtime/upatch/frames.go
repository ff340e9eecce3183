package upatch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"sort"
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

func (c *frameTables) get(path string, st unix.Stat_t) (*unwind.Table, error) {
	k := tableKey{uint64(st.Dev), st.Ino, st.Size, st.Mtim.Nano()}
	v, _ := c.m.LoadOrStore(k, &tableEntry{})
	e := v.(*tableEntry)
	defer func() {
		if e.err != nil {
			c.m.CompareAndDelete(k, e) // a passing failure (EMFILE, EIO) is tried again next time
		}
	}()
	e.once.Do(func() { e.t, e.err = mapTable(path, st.Size) })
	return e.t, e.err
}

// mapTable reads the call-frame table of the file at path by mapping the file
// read-only: a lookup then touches only the pages of the one description it needs,
// where reading would copy the whole .eh_frame (a few hundred KiB for libc) on every
// run of the tool. The mapping lives as long as the table (the cache's life: a
// long-running helper keeps a replaced library's old file, deleted, until it exits,
// as the processes still running it do). A fault on it (the file truncated under
// the mapping) is a panic here and during the walks (see safeBusyFrame), not a crash.
func mapTable(path string, size int64) (*unwind.Table, error) {
	if size <= 0 || size > 1<<32 {
		return nil, fmt.Errorf("call-frame information of %s: size %d", path, size)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("call-frame information of %s: %w", path, err)
	}
	image, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE)
	unix.Close(fd)
	if err != nil {
		return nil, fmt.Errorf("call-frame information of %s: map: %w", path, err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var t *unwind.Table
	err = elfsafe.Guard("call-frame information of "+path, func() error {
		f, err := elfsafe.NewFile(bytes.NewReader(image))
		if err != nil {
			return err
		}
		t, err = unwind.ParseImage(f, image)
		return err
	})
	if err != nil {
		_ = unix.Munmap(image)
		return nil, err
	}
	return t, nil
}

// frameModule is one executable mapping with the call-frame table of its file, and
// what identifies the mapping, so that the check can tell it is still there.
type frameModule struct {
	unwind.Module
	offset, dev, inode uint64
	vdso               bool
}

// frameModules lists the executable mappings of pid with the call-frame tables of their
// files, read before the process is stopped. Each mapping is a module of its own, its
// bias taken from the PT_LOAD that holds its file offset: a file mapped twice (or also
// as data) cannot lend one mapping's bias to another. A file whose table cannot be read
// is left out: frames in it fall back to the word scan.
func (e *Engine) frameModules(pid int, maps []proc.Mapping) []frameModule {
	var out []frameModule
	for _, m := range maps {
		if !m.Executable() {
			continue
		}
		if m.Path == "[vdso]" {
			if mod, ok := e.vdso.module(pid, m); ok {
				out = append(out, frameModule{Module: mod, vdso: true})
			}
			continue
		}
		if m.Inode == 0 {
			continue
		}
		path, st, err := proc.StatMapped(pid, m)
		if err != nil {
			continue
		}
		t, err := e.frames.get(path, st)
		if err != nil || t.Len() == 0 {
			continue
		}
		bias, ok := t.Bias(m.Start, m.Offset)
		if !ok {
			continue
		}
		out = append(out, frameModule{Module: unwind.Module{Lo: m.Start, Hi: m.End, Bias: bias, Table: t},
			offset: m.Offset, dev: m.Dev, inode: m.Inode})
	}
	return out
}

// framesLater delivers frameModules' result once. In the background, when a
// staging follows (several threads): reading the tables (opening and mapping each
// file, parsing its section headers) is the longest part of preparing a patch, and
// nothing needs them before the freeze, so on a machine with more than one CPU it
// overlaps the target's symbol lookups and the staging. Otherwise there is little
// to overlap (and tables already cached cost a stat per file): it reads them at
// once. The channel is buffered: a caller that gives up early leaves nothing
// blocked.
func (e *Engine) framesLater(pid int, maps []proc.Mapping, background bool) <-chan []frameModule {
	c := make(chan []frameModule, 1)
	if !background {
		c <- e.frameModules(pid, maps)
		return c
	}
	go func() { c <- e.frameModules(pid, maps) }()
	return c
}

// vmas tells which mapping covers an address of a stopped process: through
// PROCMAP_QUERY (one ioctl per address) where the kernel has it, else from the maps
// read once the process was stopped. Only a few addresses matter in a freeze (each
// thread's stack pointer, each module's start), so a query saves reading every line
// of maps while the process waits.
type vmas struct {
	q    *proc.Query
	maps []proc.Mapping // sorted, when q is nil
}

func (v *vmas) at(addr uint64) (proc.Mapping, bool) {
	if v.q != nil {
		m, ok, err := v.q.At(addr)
		return m, ok && err == nil
	}
	i := sort.Search(len(v.maps), func(i int) bool { return v.maps[i].End > addr })
	if i < len(v.maps) && v.maps[i].Start <= addr {
		return v.maps[i], true
	}
	return proc.Mapping{}, false
}

// testNoQuery, set by a test, makes the freeze read maps as on kernels without
// PROCMAP_QUERY.
var testNoQuery bool

// openQuery opens the mapping queries of pid, nil where the kernel has none (the
// freeze then reads maps).
func openQuery(pid int) *proc.Query {
	if testNoQuery {
		return nil
	}
	q, err := proc.OpenQuery(pid)
	if err != nil {
		return nil
	}
	return q
}

// stoppedMaps gives the mappings of a stopped process (through q when not nil), and
// keeps of the modules read before the stop those still mapped: the stack check
// works from both.
func stoppedMaps(pr *ptrace.Process, loaded []frameModule, q *proc.Query) (*vmas, []unwind.Module, error) {
	v := &vmas{q: q}
	if q != nil {
		// The queries reach the memory the process had when q was opened: after
		// an execve they fail, where maps read now would describe the new image.
		if _, _, err := q.At(0); err != nil {
			return nil, nil, exited(pr.Pid, fmt.Errorf("mappings of pid %d: %w", pr.Pid, err))
		}
	} else {
		maps, err := proc.Maps(pr.Pid)
		if err != nil {
			return nil, nil, exited(pr.Pid, err)
		}
		v.maps = maps
	}
	return v, stillMapped(loaded, v), nil
}

// stillMapped keeps the modules whose mapping is unchanged, seen with the process
// stopped: a library unloaded, or another put in its place, between the reading of
// the tables and the stop must not lend its rules to other code.
func stillMapped(mods []frameModule, v *vmas) []unwind.Module {
	out := make([]unwind.Module, 0, len(mods))
	for _, fm := range mods {
		m, ok := v.at(fm.Lo)
		if !ok || m.Start != fm.Lo || m.End != fm.Hi || !m.Executable() {
			continue
		}
		if fm.vdso && m.Inode == 0 || !fm.vdso && m.Offset == fm.offset && m.Dev == fm.dev && m.Inode == fm.inode {
			out = append(out, fm.Module)
		}
	}
	return out
}

// vdsoTable keeps the call-frame table of the last vDSO image seen: every process
// of one kernel maps the same image, so its table is read once, not per process.
type vdsoTable struct {
	mu  sync.Mutex
	img []byte
	t   *unwind.Table
}

// module reads the kernel's vDSO image from the process (it is small, and
// clock_gettime and friends run in it) and gives its table.
func (c *vdsoTable) module(pid int, m proc.Mapping) (unwind.Module, bool) {
	if m.End-m.Start > 1<<20 {
		return unwind.Module{}, false
	}
	img := make([]byte, m.End-m.Start)
	if err := (ptrace.Remote{Pid: pid}).ReadMem(m.Start, img); err != nil {
		return unwind.Module{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t == nil || !bytes.Equal(img, c.img) {
		t, ok := vdsoTableOf(img)
		if !ok {
			return unwind.Module{}, false
		}
		c.img, c.t = img, t
	}
	return unwind.Module{Lo: m.Start, Hi: m.End, Bias: m.Start - c.t.MinVaddr, Table: c.t}, true
}

// vdsoTableOf parses the table of a vDSO image.
func vdsoTableOf(img []byte) (*unwind.Table, bool) {
	f, err := elfsafe.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, false
	}
	var t *unwind.Table
	if elfsafe.Guard("vDSO call-frame information", func() error {
		var err error
		t, err = unwind.ParseImage(f, img)
		return err
	}) != nil || t.Len() == 0 {
		return nil, false
	}
	return t, true
}

// busyFrames is what busyFrame found in one thread.
type busyFrames struct {
	hit     *busyRange // the innermost busy function, nil if none
	running bool       // hit is where the thread's instruction pointer is
	where   string     // how hit was found
	// leave is the frame the outermost busy frame returns to: once the thread
	// returns there it is out of every busy function. Valid when stuck is "".
	leave unwind.Frame
	stuck string // why the thread cannot be waited for
}

// callSites recognises return addresses by the call before them, where call-frame
// information is missing (the patch's own code has none): a word of the stack is a
// return address into the caller of busy code if the instruction before it is a
// direct call whose target is busy code, or one of entries (a replaced function,
// whose jump leads into the patch).
type callSites struct {
	code    memReader
	entries map[uint64]bool
	mods    []unwind.Module
}

// callReturn reports whether w follows a direct call into busy code.
func (c *callSites) callReturn(w uint64, find func(uint64) *busyRange) bool {
	if w < 5 || (find(w) == nil && !inModule(c.mods, w)) {
		return false
	}
	var b [5]byte
	if c.code.ReadMem(w-5, b[:]) != nil || b[0] != 0xe8 {
		return false
	}
	target := uint64(int64(w) + int64(int32(binary.LittleEndian.Uint32(b[1:]))))
	return c.entries[target] || find(target) != nil
}

func inModule(mods []unwind.Module, pc uint64) bool {
	for _, m := range mods {
		if pc >= m.Lo && pc < m.Hi {
			return true
		}
	}
	return false
}

// busyFrame walks the frames of one thread whose stack bytes (from lo) were read, and
// reports the frames that find says are busy: a frame's instruction pointer or
// return address, or, above the first frame that cannot be unwound, any word.
//
// With sites, a walk that stops in busy code without call-frame information goes on
// at the first word above that follows a direct call into busy code and does not
// itself return into busy code: the return address of the outermost busy frame, as
// far as the call sites tell. That only chooses where to wait for the thread; the
// frame found is not trusted to clear anything, as the walk resumed there found
// every further frame busy or not, and the check that follows any wait starts again.
func busyFrame(regs unix.PtraceRegs, stack []byte, lo uint64, mods []unwind.Module, find func(uint64) *busyRange, sites *callSites) busyFrames {
	mem := func(addr uint64) (uint64, bool) {
		if addr < lo || addr%8 != 0 || addr-lo+8 > uint64(len(stack)) {
			return 0, false
		}
		return binary.LittleEndian.Uint64(stack[addr-lo:]), true
	}
	end := lo + uint64(len(stack))
	var out busyFrames
	last := regs.Rsp
	depth, afterHit := 0, false
	visit := func(f unwind.Frame) bool {
		last = f.SP
		if afterHit {
			out.leave, afterHit = f, false
		}
		if r := find(f.PC); r != nil {
			if out.hit == nil {
				out.hit, out.running, out.where = r, depth == 0, "in a frame"
			}
			out.leave, afterHit = unwind.Frame{}, true
		}
		depth++
		return true
	}
	r := unwind.NewRegs(regs.Rip, dwarfRegs(regs))
	var err error
	for {
		err = unwind.Walk(r, mods, mem, maxFrames, visit)
		if err == nil || !afterHit || sites == nil {
			break
		}
		// Stopped in busy code: look for its caller by the call sites.
		found := false
		for a := max(last&^7, lo); a+8 <= end; a += 8 {
			w, _ := mem(a)
			if sites.callReturn(w, find) && find(w) == nil {
				r = unwind.Regs{PC: w, PCAt: a, Return: true}
				r.Val[7], r.Set[7] = a+8, true // rsp
				found = true
				break
			}
		}
		if !found {
			break
		}
	}
	if out.hit != nil && out.leave.PCAt == 0 {
		out.stuck = "its outermost busy frame does not return (the thread's first function, or a return address not on the stack)"
	}
	if err == nil {
		return out
	}
	// Conservative from the frame that could not be unwound.
	start := max(last&^7, lo)
	for a := start; a+8 <= end; a += 8 {
		w, _ := mem(a)
		if r := find(w); r != nil {
			if out.hit == nil {
				out.hit, out.where = r, fmt.Sprintf("on its stack, above a frame that could not be unwound (%v)", err)
			}
			out.stuck = fmt.Sprintf("a frame could not be unwound (%v)", err)
			return out
		}
	}
	if out.hit != nil && afterHit {
		out.stuck = fmt.Sprintf("the frame its busy function returns to could not be unwound (%v)", err)
	}
	return out
}

// safeBusyFrame is busyFrame where reading a mapped table may fault (its file was
// truncated): the fault is a panic, and the thread's whole stack is then scanned
// word by word, as for a frame that could not be unwound.
func safeBusyFrame(regs unix.PtraceRegs, stack []byte, lo uint64, mods []unwind.Module, find func(uint64) *busyRange, sites *callSites) (out busyFrames) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			out = busyFrame(regs, stack, lo, nil, find, nil)
			if out.hit != nil {
				out.stuck = fmt.Sprintf("call-frame information could not be read (%v)", r)
			}
		}
	}()
	return busyFrame(regs, stack, lo, mods, find, sites)
}

// dwarfRegs orders the general registers as DWARF numbers them on x86-64.
func dwarfRegs(r unix.PtraceRegs) [16]uint64 {
	return [16]uint64{r.Rax, r.Rdx, r.Rcx, r.Rbx, r.Rsi, r.Rdi, r.Rbp, r.Rsp,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15}
}
