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
// local) does not make a function look busy. A signal frame is recognised by its
// trampoline's code and walked through to the frames the signal interrupted, on
// whichever stack they are (sigstack.go). Where a frame cannot be unwound (code
// without call-frame information, such as an earlier patch, or rules that need DWARF
// expressions), the rest of the stack from that frame up is scanned word by word, as
// before, and so are the stacks of the signal frames found there: conservative,
// never less safe.

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
		var err error
		t, err = imageTable(image)
		return err
	})
	if err != nil {
		_ = unix.Munmap(image)
		return nil, err
	}
	return t, nil
}

// imageTable parses the call-frame table of the ELF file whose bytes are image. The
// program headers lead to the search table of .eh_frame_hdr directly (see
// unwind.ParseLoaded): parsing every section header, for one file of each module at
// every run of the tool, cost more than the lookups. Files without that table
// are read through their section headers.
func imageTable(image []byte) (*unwind.Table, error) {
	if t, ok := unwind.ParseLoaded(image); ok {
		return t, nil
	}
	f, err := elfsafe.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, err
	}
	return unwind.ParseImage(f, image)
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
	var t *unwind.Table
	if elfsafe.Guard("vDSO call-frame information", func() error {
		var err error
		t, err = imageTable(img)
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
	// unchecked says why part of the thread's frames could not be looked at (a
	// stack a signal interrupted could not be read): busy or not, it cannot pass.
	unchecked string
}

// settled makes a busy thread with frames left unchecked one that is not waited
// for: where it leaves is not known.
func (b busyFrames) settled() busyFrames {
	if b.hit != nil && b.unchecked != "" && b.stuck == "" {
		b.stuck = b.unchecked
	}
	return b
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

// frameCheck is what the check of every thread of a process uses: the modules with
// call-frame tables, the busy ranges (find), for unpatch the call sites (see
// callSites), and the recognition of signal trampolines (nil: none is recognised).
type frameCheck struct {
	mods  []unwind.Module
	find  func(uint64) *busyRange
	sites *callSites
	sigs  *sigreturns
}

// busyFrame walks the frames of one thread, from its registers on the stacks ts
// reads (its current one first), and reports the frames that find says are busy: a
// frame's instruction pointer or return address, or, above the first frame that
// cannot be unwound, any word.
//
// A signal frame (a return address, or the thread's instruction pointer, at an
// rt_sigreturn trampoline) does not end the walk: it goes on from the registers the
// signal interrupted, read from the frame, on the stack that holds their stack
// pointer (another one when the handler runs on a sigaltstack). The interrupted
// instruction counts as a frame's instruction pointer: a thread interrupted inside a
// busy function is busy. The word scan likewise follows the signal frames it finds
// to the stacks they interrupted. A stack a signal frame names that cannot be read
// leaves the thread unchecked (busyFrames.unchecked).
//
// With sites, a walk that stops in busy code without call-frame information goes on
// at the first word above that follows a direct call into busy code and does not
// itself return into busy code: the return address of the outermost busy frame, as
// far as the call sites tell. That only chooses where to wait for the thread; the
// frame found is not trusted to clear anything, as the walk resumed there found
// every further frame busy or not, and the check that follows any wait starts again.
func (c *frameCheck) busyFrame(regs unix.PtraceRegs, ts *threadStacks) busyFrames {
	var out busyFrames
	seg := ts.segs[0]
	r := unwind.NewRegs(regs.Rip, dwarfRegs(regs))
	depth, afterHit := 0, false
	where := "in a frame"
	for signals := 0; ; signals++ {
		// first is the depth of the walk's first frame; exact says its pc is an
		// instruction (the thread's, or one a signal interrupted), not a return address.
		first, exact, last := depth, !r.Return, r.Val[7]
		uc, atSignal := uint64(0), false
		visit := func(f unwind.Frame) bool {
			last = f.SP
			if afterHit {
				out.leave, afterHit = f, false
			}
			if b := c.find(f.PC); b != nil {
				if out.hit == nil {
					out.hit, out.running, out.where = b, depth == 0, where
					if depth == first && exact && signals > 0 {
						out.where = "interrupted there by a signal, whose handler has not returned"
					}
				}
				out.leave, afterHit = unwind.Frame{}, true
			}
			inside := depth == first && exact
			depth++
			if c.sigs != nil && c.sigs.at(f.PC, inside) {
				uc, atSignal = f.SP, true // the ucontext is just above the trampoline's address
				return false
			}
			return true
		}
		var err error
		for {
			err = unwind.Walk(r, c.mods, seg.word, maxFrames, visit)
			if err == nil || !afterHit || c.sites == nil {
				break
			}
			// Stopped in busy code: look for its caller by the call sites.
			found := false
			for a := max(last&^7, seg.lo); a+8 <= seg.end(); a += 8 {
				w, _ := seg.word(a)
				if c.sites.callReturn(w, c.find) && c.find(w) == nil {
					r = unwind.Regs{PC: w, PCAt: a, Return: true}
					r.Val[7], r.Set[7] = a+8, true // rsp
					found = true
					break
				}
			}
			if !found {
				break
			}
			first, exact = depth, false
		}
		if atSignal && signals >= maxSignalFrames {
			out.unchecked = fmt.Sprintf("more than %d nested signal frames", maxSignalFrames)
			err = fmt.Errorf("%w: %s", unwind.ErrNoInfo, out.unchecked)
		} else if atSignal {
			next, nextSeg, serr := c.interrupted(ts, seg, uc)
			if serr == nil {
				r, seg, where = next, nextSeg, "in a frame below a signal handler"
				continue
			}
			if next.Set[7] {
				// The registers were read, not the stack they name: the interrupted
				// instruction is still checked, the thread cannot pass.
				if b := c.find(next.PC); b != nil && out.hit == nil {
					out.hit, out.where = b, "interrupted there by a signal, whose handler has not returned"
				}
				out.unchecked = serr.Error()
			}
			err = serr
		}
		if out.hit != nil && out.leave.PCAt == 0 {
			out.stuck = "its outermost busy frame does not return (the thread's first function, or a return address not on the stack)"
		}
		if err == nil {
			return out.settled()
		}
		// Conservative from the frame that could not be unwound.
		if c.scan(ts, seg, last, err, &out) {
			return out.settled()
		}
		if out.hit != nil && afterHit {
			out.stuck = fmt.Sprintf("the frame its busy function returns to could not be unwound (%v)", err)
		}
		return out.settled()
	}
}

// interrupted reads the registers in the signal frame whose ucontext is at uc on seg,
// and the stack that holds their stack pointer. An error means the walk cannot go
// on: the frame is not readable or not one the kernel wrote (the scan then takes
// over), or, with the registers given, their stack cannot be read.
func (c *frameCheck) interrupted(ts *threadStacks, seg *stackSeg, uc uint64) (unwind.Regs, *stackSeg, error) {
	if !unwind.PlausibleSignalFrame(uc, seg.word) {
		return unwind.Regs{}, nil, fmt.Errorf("%w: the signal frame at %#x does not hold a user code segment", unwind.ErrNoInfo, uc)
	}
	r, err := unwind.SignalRegs(uc, seg.word)
	if err != nil {
		return unwind.Regs{}, nil, fmt.Errorf("%w: %v", unwind.ErrNoInfo, err)
	}
	next, err := ts.at(r.Val[7])
	if err != nil {
		return r, nil, fmt.Errorf("the stack a signal interrupted (at %#x) cannot be read: %v", r.Val[7], err)
	}
	return r, next, nil
}

// scan is the conservative check of seg from start, where the walk could go no
// further (cause): any word in a busy range makes the thread busy. A word that is a
// trampoline's address, followed by a signal frame the kernel could have written,
// leads to the instruction the signal interrupted, checked like a word, and to the
// stack it interrupted, scanned in turn. It reports whether it found a busy word.
func (c *frameCheck) scan(ts *threadStacks, seg *stackSeg, start uint64, cause error, out *busyFrames) bool {
	busy := func(b *busyRange, where string) bool {
		if out.hit == nil {
			out.hit, out.where = b, fmt.Sprintf("%s, above a frame that could not be unwound (%v)", where, cause)
		}
		out.stuck = fmt.Sprintf("a frame could not be unwound (%v)", cause)
		return true
	}
	type part struct {
		seg  *stackSeg
		from uint64
	}
	parts := []part{{seg, start}}
	followed := make(map[uint64]bool)
	for i := 0; i < len(parts); i++ {
		p := parts[i]
		for a := max(p.from&^7, p.seg.lo); a+8 <= p.seg.end(); a += 8 {
			w, _ := p.seg.word(a)
			if b := c.find(w); b != nil {
				return busy(b, "on its stack")
			}
			uc := a + 8
			if c.sigs == nil || !c.sigs.candidate(w) || followed[uc] || !c.sigs.at(w, false) ||
				!unwind.PlausibleSignalFrame(uc, p.seg.word) {
				continue
			}
			r, err := unwind.SignalRegs(uc, p.seg.word)
			if err != nil {
				continue // no room for the registers: not a frame the kernel wrote
			}
			if len(followed) == maxSignalFrames {
				out.unchecked = fmt.Sprintf("more than %d signal frames on its stacks", maxSignalFrames)
				continue
			}
			followed[uc] = true
			if b := c.find(r.PC); b != nil {
				return busy(b, "interrupted by a signal, its frame found on its stack")
			}
			next, err := ts.at(r.Val[7])
			if err != nil {
				out.unchecked = fmt.Sprintf("the stack a signal interrupted (at %#x) cannot be read: %v", r.Val[7], err)
				continue
			}
			parts = append(parts, part{next, r.Val[7]})
		}
	}
	return false
}

// safeBusyFrame is busyFrame where reading a mapped table may fault (its file was
// truncated): the fault is a panic, and the thread's stacks are then scanned word
// by word, as for a frame that could not be unwound.
func (c *frameCheck) safeBusyFrame(regs unix.PtraceRegs, ts *threadStacks) (out busyFrames) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			plain := frameCheck{find: c.find, sigs: c.sigs}
			out = plain.busyFrame(regs, ts)
			if out.hit != nil {
				out.stuck = fmt.Sprintf("call-frame information could not be read (%v)", r)
			}
		}
	}()
	return c.busyFrame(regs, ts)
}

// dwarfRegs orders the general registers as DWARF numbers them on x86-64.
func dwarfRegs(r unix.PtraceRegs) [16]uint64 {
	return [16]uint64{r.Rax, r.Rdx, r.Rcx, r.Rbx, r.Rsi, r.Rdi, r.Rbp, r.Rsp,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15}
}
