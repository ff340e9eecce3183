package upatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

// Waiting for busy frames to return.
//
// When a thread is busy in a function being replaced (or, for unpatch, in the
// patch), and Options.Timeout allows, the engine does not give up or retry from
// scratch: in the same attach it makes the thread stop itself as soon as it
// leaves, lets the process run, and checks again once it did.
//
// Where a thread leaves is the return address of its outermost busy frame, found
// by the same unwinding as the check. The patch's own code has no call-frame
// information, so for unpatch the frame that called into the patch is found by its
// call site instead (callSites in frames.go): the first word above the busy frame
// that follows a direct call of a replaced function (or of patch code) and does not
// itself return into the patch. That only chooses the slot to redirect; whether the
// thread is out is decided by the full check after the wait. The engine does not put a breakpoint there:
// an int3 left in the code by a tool that dies (SIGKILL, OOM) kills the process
// with SIGTRAP the next time any thread gets there, and a hardware breakpoint
// (debug registers set through PTRACE_POKEUSER) stays armed in the thread after
// the tracer is gone just the same (and, on this project's test machine, a
// virtual machine, never fires at all). Instead it changes the frame's return
// address, on the thread's own stack, to an entry of a small piece of code in a
// page it maps for the purpose (testdata/leave_amd64.s). The entry pushes the real
// return address; the code saves the registers it uses, sends the thread a
// notification signal (SIGURG, else SIGWINCH: one the process does not catch and
// the thread does not block, whose default action is to ignore it), restores the
// registers and returns where the frame would have. Traced, the signal stops the
// thread for the engine right there; untraced (the engine died), the process
// ignores it and the thread goes on unharmed. Nothing in the process's own code
// changes, and only the one frame that was found is redirected (a recursive call
// returning to the same address is not mistaken for it).
//
// While it waits every thread runs, not only the busy ones: a busy thread often
// waits for another one (a lock, a pipe, a condition), and a process that serves
// requests keeps serving them. Threads that enter a busy function meanwhile are
// found by the check that follows, which redirects them in turn, until the
// deadline. The wait ends as soon as one redirected thread arrives (or exits): the
// engine stops every thread again, puts each thread that is anywhere in the page
// back into the state it would have after returning (its registers from the
// page's saved copies, its instruction pointer at the real return address),
// writes back every return address that was not used, and checks again. So at
// each stop the process is exactly as it would be untraced, the page aside.
//
// The page is unmapped at the end unless a thread's registers or live stack still
// point into it (a signal handler interrupted the thread inside the code, say);
// it is then left in place, 4 KiB, harmless. Limits: a frame whose return
// address is redirected cannot be unwound through while the engine waits (a C++
// exception thrown through it ends in std::terminate, a backtrace() stops there),
// so threads with a shadow stack are not waited for (their return would fault);
// nor are threads whose outermost busy frame cannot be found (a frame that could
// not be unwound), nor processes that catch both notification signals, nor a
// process stopped by job control (SIGSTOP): letting it run would override the stop,
// and a SIGSTOP that comes during a wait ends it, the process left stopped.

// leaveCode is testdata/leave_amd64.s assembled (TestLeaveCodeMatchesSource).
var leaveCode = []byte{
	0x50, 0x51, 0x41, 0x53, 0x57, 0x56, 0xb8, 0xba, 0x00, 0x00, 0x00, 0x0f,
	0x05, 0x89, 0xc7, 0x8b, 0x35, 0x2b, 0x00, 0x00, 0x00, 0xb8, 0xc8, 0x00,
	0x00, 0x00, 0x0f, 0x05, 0x5e, 0x5f, 0x41, 0x5b, 0x59, 0x58, 0xc3, 0x90,
	0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
	0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
	0x90, 0x90, 0x90, 0x90, 0x00, 0x00, 0x00, 0x00,
}

const (
	leaveNotified = 0x1c // after the notification: the thread stops here
	leaveEnd      = 0x23 // end of the code (after ret)
	leaveSig      = 0x40 // the notification signal, a 32-bit word
	leaveEntries  = 0x80 // first entry
	leaveEntry    = 32   // size of an entry: push the return address, jump to the code
	leavePage     = pageSize
	maxLeaves     = (leavePage - leaveEntries) / leaveEntry
)

// leaveSaved maps an offset in the code to how many of the saved registers are on
// the stack there, in the order rsi rdi r11 rcx rax from the top (the last ones
// pushed, or not yet popped), with the real return address above them.
var leaveSaved = map[uint64]int{
	0x00: 0, 0x01: 1, 0x02: 2, 0x04: 3, 0x05: 4,
	0x06: 5, 0x0b: 5, 0x0d: 5, 0x0f: 5, 0x15: 5, 0x1a: 5, 0x1c: 5,
	0x1d: 4, 0x1e: 3, 0x20: 2, 0x21: 1, 0x22: 0,
}

// waitPoint is where one busy thread leaves its busy frames: the stack slot that
// holds the return address of its outermost busy frame, and that address.
type waitPoint struct {
	tid  int
	slot uint64
	ret  uint64
	name string // the busy function
}

// busyError is ErrBusy with every busy thread the check found.
type busyError struct {
	msg   string
	tid   int    // the first busy thread
	name  string // and its function
	waits []waitPoint
	stuck string // why some busy thread cannot be waited for; "" when all can
}

func (e *busyError) Error() string { return e.msg }
func (e *busyError) Unwrap() error { return ErrBusy }

// leavePage is the page of return code mapped in one process for one operation.
type leaver struct {
	pr     *ptrace.Process
	base   uint64
	active []waitPoint // redirected, not yet settled
}

func (l *leaver) contains(a uint64) bool { return a >= l.base && a < l.base+leavePage }

func (l *leaver) entry(i int) uint64 { return l.base + leaveEntries + uint64(i)*leaveEntry }

// newLeaver maps the page and writes the code into it.
func newLeaver(pr *ptrace.Process) (*leaver, error) {
	base, err := pr.Syscall(unix.SYS_MMAP, 0, leavePage, unix.PROT_READ|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		if int64(base) > 0 && errors.Is(err, ptrace.ErrRan) {
			_, _ = pr.Syscall(unix.SYS_MUNMAP, base, leavePage)
		}
		return nil, fmt.Errorf("map return code: %w", err)
	}
	l := &leaver{pr: pr, base: base}
	if err := pr.WriteMem(base, leaveCode); err != nil {
		_, _ = pr.Syscall(unix.SYS_MUNMAP, base, leavePage)
		return nil, fmt.Errorf("write return code: %w", err)
	}
	return l, nil
}

// putEntry encodes entry i, which returns to ret through the code, into e.
func (l *leaver) putEntry(e []byte, i int, ret uint64) {
	// push qword [rip+10] (the return address, 16 bytes into the entry); jmp code
	copy(e, []byte{0xff, 0x35, 10, 0, 0, 0, 0xe9})
	binary.LittleEndian.PutUint32(e[7:], uint32(int32(int64(l.base)-int64(l.entry(i)+11))))
	copy(e[11:16], []byte{0x90, 0x90, 0x90, 0x90, 0x90})
	binary.LittleEndian.PutUint64(e[16:], ret)
}

// redirect points the return address of each wait point at an entry that returns
// to it through the code, after the entries and the signal are written.
func (l *leaver) redirect(waits []waitPoint, sig int) error {
	if len(waits) > maxLeaves {
		return fmt.Errorf("%d busy threads, at most %d can be waited for", len(waits), maxLeaves)
	}
	page := make([]byte, leavePage-leaveSig)
	binary.LittleEndian.PutUint32(page, uint32(sig))
	for i, w := range waits {
		l.putEntry(page[leaveEntries-leaveSig+i*leaveEntry:], i, w.ret)
	}
	if err := l.pr.WriteMem(l.base+leaveSig, page[:leaveEntries-leaveSig+len(waits)*leaveEntry]); err != nil {
		return fmt.Errorf("write return entries: %w", err)
	}
	writes := make([]ptrace.Write, len(waits))
	for i, w := range waits {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], l.entry(i))
		writes[i] = ptrace.Write{Addr: w.slot, Data: b[:]}
	}
	l.active = append(l.active[:0], waits...)
	if err := l.pr.WriteMemv(writes); err != nil {
		_ = l.settle()
		return fmt.Errorf("redirect return addresses: %w", err)
	}
	return nil
}

// settle puts every thread that is in the page into the state it would have after
// returning where its frame returns, and writes back every redirected return
// address that was not used. The process must be stopped.
func (l *leaver) settle() error {
	var first error
	note := func(err error) {
		if first == nil {
			first = err
		}
	}
	for _, tid := range l.pr.Threads() {
		r, err := l.pr.Regs(tid)
		if err != nil {
			note(err)
			continue
		}
		if !l.contains(r.Rip) {
			continue
		}
		fixed, err := l.returned(r, l.pr)
		if err != nil {
			note(fmt.Errorf("thread %d in the return code at %#x: %w", tid, r.Rip, err))
			continue
		}
		if err := l.pr.SetRegs(tid, fixed); err != nil {
			note(err)
		}
	}
	for i, w := range l.active {
		var b [8]byte
		if err := l.pr.ReadMem(w.slot, b[:]); err != nil {
			note(err)
			continue
		}
		if binary.LittleEndian.Uint64(b[:]) != l.entry(i) {
			continue // used (or the frame is gone): nothing to put back
		}
		binary.LittleEndian.PutUint64(b[:], w.ret)
		if err := l.pr.WriteMem(w.slot, b[:]); err != nil {
			note(err)
		}
	}
	l.active = l.active[:0]
	return first
}

// returned computes the registers of a thread stopped at r inside the page as they
// are once it returned: what the code saved comes back from the stack, the
// instruction pointer is the real return address and the stack pointer is where
// the frame's return left it.
func (l *leaver) returned(r unix.PtraceRegs, mem memReader) (unix.PtraceRegs, error) {
	off := r.Rip - l.base
	if off >= leaveEntries {
		i := (off - leaveEntries) / leaveEntry
		switch (off - leaveEntries) % leaveEntry {
		case 0: // nothing pushed yet
			var b [8]byte
			if err := mem.ReadMem(l.entry(int(i))+16, b[:]); err != nil {
				return r, err
			}
			r.Rip, r.Orig_rax = binary.LittleEndian.Uint64(b[:]), ^uint64(0)
			return r, nil
		case 6: // the return address pushed; the code not entered
			off = 0
		default:
			return r, fmt.Errorf("not at an instruction of an entry")
		}
	}
	n, ok := leaveSaved[off]
	if !ok {
		return r, fmt.Errorf("not at an instruction of the code")
	}
	words := make([]byte, 8*(n+1))
	if err := mem.ReadMem(r.Rsp, words); err != nil {
		return r, err
	}
	saved := []*uint64{&r.Rsi, &r.Rdi, &r.R11, &r.Rcx, &r.Rax}[5-n:]
	for i, reg := range saved {
		*reg = binary.LittleEndian.Uint64(words[8*i:])
	}
	r.Rip = binary.LittleEndian.Uint64(words[8*n:])
	r.Rsp += uint64(8 * (n + 1))
	r.Orig_rax = ^uint64(0)
	return r, nil
}

// release unmaps the page unless something still points into it: a thread's
// instruction pointer, or a word of a thread's live stack (a signal frame saved
// inside the code). The process must be stopped and settled.
func (l *leaver) release() {
	maps, err := proc.Maps(l.pr.Pid)
	if err != nil {
		return
	}
	for _, tid := range l.pr.Threads() {
		r, err := l.pr.Regs(tid)
		if err != nil || l.contains(r.Rip) {
			return
		}
		lo, hi := stackBounds(&vmas{maps: maps}, r.Rsp)
		if hi <= lo {
			return
		}
		b := make([]byte, hi-lo)
		if l.pr.ReadMem(lo, b) != nil {
			return
		}
		for i := 0; i+8 <= len(b); i += 8 {
			if l.contains(binary.LittleEndian.Uint64(b[i:])) {
				return
			}
		}
	}
	_, _ = l.pr.Syscall(unix.SYS_MUNMAP, l.base, leavePage)
}

// notifySignal chooses the signal the code sends: one the process does not catch
// and none of the threads blocks. 0 if there is none.
func notifySignal(pr *ptrace.Process, tids []int) (int, error) {
	caught, err := proc.CaughtSignals(pr.Pid)
	if err != nil {
		return 0, exited(pr.Pid, err)
	}
	for _, sig := range []int{int(unix.SIGURG), int(unix.SIGWINCH)} {
		bit := uint64(1) << (sig - 1)
		ok := caught&bit == 0
		for _, tid := range tids {
			m, err := pr.SigMask(tid)
			if err != nil {
				return 0, err
			}
			ok = ok && m&bit == 0
		}
		if ok {
			return sig, nil
		}
	}
	return 0, nil
}

// shadowStack reports whether thread tid runs with a shadow stack, on which a
// changed return address faults.
func shadowStack(pid, tid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "x86_Thread_features:"); ok {
			return strings.Contains(v, "shstk")
		}
	}
	return false
}

// waitOut runs op again until it is no longer busy, waiting for busy threads to
// leave, until deadline (see above). err is op's first result; timeout is what the
// deadline came from, for the error.
func waitOut(pr *ptrace.Process, err error, deadline time.Time, timeout time.Duration, cancel <-chan struct{}, op func(*ptrace.Process) error) (waited time.Duration, _ error) {
	var l *leaver
	defer func() {
		if l != nil {
			l.release()
		}
	}()
	for {
		var be *busyError
		if !errors.As(err, &be) {
			return waited, err
		}
		if be.stuck != "" {
			return waited, fmt.Errorf("%w (cannot wait for it: %s)", err, be.stuck)
		}
		tids := make([]int, len(be.waits))
		for i, w := range be.waits {
			tids[i] = w.tid
			if shadowStack(pr.Pid, w.tid) {
				return waited, fmt.Errorf("%w (cannot wait for it: thread %d runs with a shadow stack)", err, w.tid)
			}
		}
		sig, serr := notifySignal(pr, tids)
		if serr != nil {
			return waited, serr
		}
		if sig == 0 {
			return waited, fmt.Errorf("%w (cannot wait for it: the process catches SIGURG and SIGWINCH, or its busy threads block them)", err)
		}
		if l == nil {
			if l, serr = newLeaver(pr); serr != nil {
				return waited, fmt.Errorf("%w (cannot wait for it: %v)", err, serr)
			}
		}
		if serr := l.redirect(be.waits, sig); serr != nil {
			return waited, fmt.Errorf("%w (cannot wait for it: %v)", err, serr)
		}
		start := time.Now()
		rerr := pr.RunUntil(l.base, l.base+leavePage, sig, tids, deadline, cancel)
		waited += time.Since(start)
		if serr := l.settle(); serr != nil && rerr == nil {
			rerr = serr
		}
		switch {
		case errors.Is(rerr, ptrace.ErrJobStopped):
			return waited, fmt.Errorf("%w (cannot wait for it: %v)", err, rerr)
		case errors.Is(rerr, ptrace.ErrCanceled):
			return waited, fmt.Errorf("%w: canceled while thread %d was still in function %q", rerr, be.tid, be.name)
		case rerr != nil && !errors.Is(rerr, ptrace.ErrDeadline):
			return waited, exited(pr.Pid, rerr)
		}
		err = op(pr)
		if errors.Is(rerr, ptrace.ErrDeadline) && errors.As(err, &be) {
			return waited, fmt.Errorf("%w: thread %d still in function %q after %v", ErrBusy, be.tid, be.name, timeout)
		}
	}
}
