package ptrace

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
)

// stubCode is testdata/stub_amd64.s assembled (`as` then `objcopy -O binary`;
// TestStubMatchesSource rebuilds it), followed by the NUL-terminated path
// "/proc/self/mem". See the package documentation for what it does and why.
var stubCode = []byte{
	0x48, 0x89, 0xe3, 0x4c, 0x8d, 0xa3, 0xe8, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x2b, 0x48, 0xc7, 0x03,
	0xff, 0xff, 0xff, 0xff, 0x48, 0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4d,
	0x85, 0xed, 0x0f, 0x84, 0xe6, 0x00, 0x00, 0x00, 0x49, 0x8b, 0x04, 0x24, 0x48, 0x0f, 0xba, 0xe0,
	0x25, 0x73, 0x13, 0x48, 0x83, 0xbb, 0xa0, 0x00, 0x00, 0x00, 0x00, 0x74, 0x09, 0x48, 0xc7, 0xc0,
	0x83, 0xff, 0xff, 0xff, 0xeb, 0x3a, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10,
	0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d,
	0x8b, 0x4c, 0x24, 0x30, 0x48, 0x0f, 0xba, 0xe0, 0x20, 0x73, 0x03, 0x48, 0x8b, 0x3b, 0x48, 0x0f,
	0xba, 0xe0, 0x21, 0x72, 0x41, 0x48, 0x0f, 0xba, 0xe0, 0x22, 0x72, 0x5a, 0x89, 0xc0, 0x0f, 0x05,
	0x49, 0x89, 0x44, 0x24, 0x38, 0x49, 0x8b, 0x0c, 0x24, 0x48, 0x85, 0xc0, 0x79, 0x12, 0x48, 0x0f,
	0xba, 0xe1, 0x24, 0x73, 0x0b, 0x48, 0xc7, 0x83, 0xa0, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
	0x48, 0x0f, 0xba, 0xe1, 0x23, 0x73, 0x03, 0x48, 0x89, 0x03, 0x49, 0x83, 0xc4, 0x40, 0x49, 0xff,
	0xcd, 0xe9, 0x69, 0xff, 0xff, 0xff, 0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6, 0x4c,
	0x89, 0xd2, 0x4c, 0x89, 0xc1, 0x4d, 0x89, 0xc8, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xe4, 0xf0, 0xff,
	0xd0, 0x48, 0x89, 0xec, 0xeb, 0xaa, 0x49, 0x89, 0xfe, 0x48, 0x89, 0xf5, 0x49, 0x89, 0xd7, 0x4d,
	0x85, 0xff, 0x74, 0x23, 0xb8, 0x12, 0x00, 0x00, 0x00, 0x4c, 0x89, 0xf7, 0x48, 0x8d, 0x75, 0x20,
	0x8b, 0x55, 0x18, 0x4c, 0x8b, 0x55, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x78, 0x82, 0x48, 0x83,
	0xc5, 0x40, 0x49, 0xff, 0xcf, 0xeb, 0xd8, 0x31, 0xc0, 0xe9, 0x72, 0xff, 0xff, 0xff, 0x48, 0x8b,
	0x93, 0xb0, 0x00, 0x00, 0x00, 0x48, 0x83, 0xfa, 0xff, 0x75, 0x49, 0x41, 0xbc, 0x17, 0x00, 0x00,
	0x00, 0xb8, 0x0d, 0x00, 0x00, 0x00, 0x44, 0x89, 0xe7, 0x31, 0xf6, 0x48, 0x8d, 0x93, 0xc8, 0x00,
	0x00, 0x00, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x75, 0x0a, 0x48,
	0x83, 0xbb, 0xc8, 0x00, 0x00, 0x00, 0x01, 0x76, 0x11, 0x41, 0x83, 0xfc, 0x1c, 0x74, 0x08, 0x41,
	0xbc, 0x1c, 0x00, 0x00, 0x00, 0xeb, 0xca, 0x45, 0x31, 0xe4, 0x4c, 0x89, 0xa3, 0xb0, 0x00, 0x00,
	0x00, 0x4c, 0x89, 0xe2, 0x48, 0xc7, 0x43, 0x08, 0x01, 0x00, 0x00, 0x00, 0x48, 0x85, 0xd2, 0x74,
	0x15, 0xb8, 0xea, 0x00, 0x00, 0x00, 0x48, 0x8b, 0xbb, 0xb8, 0x00, 0x00, 0x00, 0x48, 0x8b, 0xb3,
	0xc0, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0xca, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x7b, 0x08, 0xbe,
	0x80, 0x00, 0x00, 0x00, 0xba, 0x01, 0x00, 0x00, 0x00, 0x4c, 0x8d, 0x53, 0x10, 0x45, 0x31, 0xc0,
	0x45, 0x31, 0xc9, 0x0f, 0x05, 0xb8, 0x0e, 0x00, 0x00, 0x00, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48,
	0x8d, 0xb3, 0xa8, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05,
	0x48, 0x8b, 0x43, 0x20, 0x48, 0x8d, 0x24, 0x03, 0x48, 0x8b, 0x43, 0x28, 0x48, 0x8b, 0x4b, 0x38,
	0x48, 0x8b, 0x53, 0x40, 0x48, 0x8b, 0x73, 0x48, 0x48, 0x8b, 0x7b, 0x50, 0x48, 0x8b, 0x6b, 0x58,
	0x4c, 0x8b, 0x43, 0x60, 0x4c, 0x8b, 0x4b, 0x68, 0x4c, 0x8b, 0x53, 0x70, 0x4c, 0x8b, 0x5b, 0x78,
	0x4c, 0x8b, 0xa3, 0x80, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0xab, 0x88, 0x00, 0x00, 0x00, 0x4c, 0x8b,
	0xb3, 0x90, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0xbb, 0x98, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x5b, 0x30,
	0x9d, 0xc2, 0x00, 0x01, 0x2f, 0x70, 0x72, 0x6f, 0x63, 0x2f, 0x73, 0x65, 0x6c, 0x66, 0x2f, 0x6d,
	0x65, 0x6d, 0x00,
}

// Offsets in stubCode and in the frame the stub works on (see the .s file).
const (
	stubNotified = 0x186 // after the notification signal was sent
	stubParked   = 0x1a5 // after the final futex wait: the stub only restores from here on
	stubPathOff  = 0x214 // "/proc/self/mem\0"
	stubRetPop   = 256   // the immediate of the stub's final `ret`
	frameFD      = 0     // op count on entry, then the saved file descriptor
	frameDone    = 8     // set to 1 when every op has run
	frameTimeout = 16    // struct timespec of the final wait
	frameFlagsAt = 32    // offset from the frame of the saved rflags, rip follows
	frameRegs    = 40    // rax rbx rcx rdx rsi rdi rbp r8..r15
	frameFailed  = 160   // set to 1 when a critical op failed
	frameMask    = 168   // the thread's signal mask, which the stub restores
	frameNotify  = 176   // the notification signal, tgid, tid
	frameOps     = 232
	opSize       = 64
	opResult     = 56

	opArgFD      = 1 << 32 // the first argument is the saved file descriptor
	opCall       = 1 << 33 // call the function at the first argument
	opTable      = 1 << 34 // write a table of (address, bytes) through the descriptor
	opSaveFD     = 1 << 35 // the result is the descriptor later ops use
	opCritical   = 1 << 36 // a negative result marks the run failed
	opSkipFailed = 1 << 37 // skipped (result -ECANCELED) once the run failed

	// parkTime bounds how long the stub waits, after its last op, for the
	// tracer to take the thread back. Only a tracer that died (or starved for
	// this long) lets it expire; the thread then restores itself and returns.
	parkTime = 250 * time.Millisecond
	// runTimeout bounds a whole run: ops run while every other thread is
	// stopped, so code waiting for a lock another thread holds never returns.
	runTimeout = time.Second
)

// TableEntrySize is the size of one entry of a table written by an OpWriteTable:
// the address to write at offset 0, the number of bytes (at most 16) as a
// little-endian uint32 at offset 24, the bytes at offset 32.
const TableEntrySize = opSize

// ErrRan is wrapped when the thread that ran injected code got back to its own
// code before the tracer took it back (the tracer was starved for longer than
// the stub waits): the results are valid, but the thread ran while the others
// were stopped, so whatever was checked about it may no longer hold.
var ErrRan = errors.New("thread ran its own code during an injected operation")

// Op is one step of a Run: a system call, a function call, or a table write.
type Op struct {
	word uint64
	args [6]uint64
	path bool // args[1] is the address of "/proc/self/mem" in the stub
}

// SyscallOp is system call nr with up to six arguments.
func SyscallOp(nr uint64, args ...uint64) Op {
	o := Op{word: nr}
	copy(o.args[:], args)
	return o
}

// CallOp calls the function at fn with up to five integer arguments; the
// result is rax.
func CallOp(fn uint64, args ...uint64) Op {
	o := Op{word: opCall}
	o.args[0] = fn
	copy(o.args[1:], args)
	return o
}

// OpenSelfMem opens /proc/self/mem of the tracee read-write; the descriptor is
// saved for the ops that follow. A failure marks the run failed.
func OpenSelfMem() Op {
	o := SyscallOp(unix.SYS_OPENAT, uint64(^uint64(99)), 0, unix.O_RDWR|unix.O_CLOEXEC)
	o.word |= opSaveFD | opCritical
	o.path = true
	return o
}

// WriteTableOp writes the n entries of the table at addr (see TableEntrySize)
// in order, each with one pwrite through the descriptor OpenSelfMem saved.
// The result is 0, or the first error (the entries before it are written).
// It is skipped after a failure and marks the run failed if it fails.
func WriteTableOp(addr uint64, n int) Op {
	o := Op{word: opTable | opArgFD | opCritical | opSkipFailed}
	o.args[1], o.args[2] = addr, uint64(n)
	return o
}

// CloseFDOp closes the descriptor OpenSelfMem saved.
func CloseFDOp() Op { return Op{word: unix.SYS_CLOSE | opArgFD} }

// Critical makes a failure of o (a negative result) mark the run failed.
func (o Op) Critical() Op { o.word |= opCritical; return o }

// IfOK makes o run only if no critical op of the run failed before it.
func (o Op) IfOK() Op { o.word |= opSkipFailed; return o }

// Run runs ops, in order, in one stopped thread of the process (the last one
// listed, rather than the group leader: a leader's end is reported only after
// the other threads', so waiting for it can block). It returns one result per
// op: rax of a system call or function, -errno on failure (-ECANCELED for an
// op skipped after a failed critical op). An error means the results are
// not known; they may still have taken effect.
func (p *Process) Run(ops ...Op) ([]uint64, error) {
	var res []uint64
	err := p.t.run(func() error {
		if p.detached {
			return ErrDetached
		}
		ths := p.Threads()
		if len(ths) == 0 {
			return fmt.Errorf("run in pid %d: %w", p.Pid, ErrExited)
		}
		var err error
		res, err = p.runOps(p.byTid[ths[len(ths)-1]], ops)
		return err
	})
	return res, err
}

// Syscall runs system call nr with up to six arguments in a stopped thread of
// the process (see Run). A return value in (-4096, 0) comes back as a
// unix.Errno error.
func (p *Process) Syscall(nr uint64, args ...uint64) (uint64, error) {
	res, err := p.Run(SyscallOp(nr, args...))
	return syscallResult(p, nr, res, err)
}

// SyscallOn is Syscall in thread tid.
func (p *Process) SyscallOn(tid int, nr uint64, args ...uint64) (uint64, error) {
	var res []uint64
	err := p.t.run(func() error {
		th, err := p.usable(tid)
		if err != nil {
			return err
		}
		res, err = p.runOps(th, []Op{SyscallOp(nr, args...)})
		return err
	})
	return syscallResult(p, nr, res, err)
}

func syscallResult(p *Process, nr uint64, res []uint64, err error) (uint64, error) {
	if len(res) == 0 {
		return 0, fmt.Errorf("syscall %d in pid %d: %w", nr, p.Pid, err)
	}
	ret := res[0]
	if int64(ret) < 0 && int64(ret) > -4096 {
		e := fmt.Errorf("syscall %d in pid %d: %w", nr, p.Pid, unix.Errno(-int64(ret)))
		if err != nil {
			e = fmt.Errorf("%w (%w)", e, err)
		}
		return ret, e
	}
	if err != nil {
		return ret, fmt.Errorf("syscall %d in pid %d: %w", nr, p.Pid, err)
	}
	return ret, nil
}

// Call runs the function at fn in the process with up to five integer
// arguments and returns rax. It is meant for small self-contained functions
// such as the IFUNC resolvers of glibc (which only read CPU features).
func (p *Process) Call(fn uint64, args ...uint64) (uint64, error) {
	if len(args) > 5 {
		return 0, fmt.Errorf("call %#x: %d arguments, at most 5", fn, len(args))
	}
	res, err := p.Run(CallOp(fn, args...))
	if err != nil || len(res) == 0 {
		return 0, fmt.Errorf("call %#x in pid %d: %w", fn, p.Pid, err)
	}
	return res[0], nil
}

// resumeState is where a thread goes back to after injected code: its
// registers, with a system call it was stopped in turned into the state the
// kernel's restart logic would give it (rip back on the syscall instruction,
// rax the call number, or restart_syscall), and orig_rax -1 so that no
// restart logic applies on top. That is a plain user-space state, valid in
// whatever stop the thread is in when it gets these registers back, and the
// one the stub itself returns to.
func resumeState(r unix.PtraceRegs) unix.PtraceRegs {
	if int64(r.Orig_rax) >= 0 {
		switch int64(r.Rax) {
		case -512, -513, -514: // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
			r.Rax = r.Orig_rax
			r.Rip -= 2
		case -516: // ERESTART_RESTARTBLOCK
			r.Rax = unix.SYS_RESTART_SYSCALL
			r.Rip -= 2
		}
	}
	r.Orig_rax = ^uint64(0)
	return r
}

func (p *Process) runOps(th *thread, ops []Op) ([]uint64, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	if len(ops) > 64 {
		return nil, fmt.Errorf("run %d ops: at most 64", len(ops))
	}
	if th.state != stStopped {
		return nil, fmt.Errorf("run in thread %d: %w", th.tid, ErrExited)
	}
	if !th.haveRegs {
		if err := getRegs(th.tid, &th.regs); err != nil {
			return nil, threadErr(th, "registers of", err)
		}
		th.haveRegs = true
	}
	stub, err := p.stubAddr()
	if err != nil {
		var probe unix.PtraceRegs
		if perr := getRegs(th.tid, &probe); perr != nil {
			return nil, threadErr(th, "registers of", perr)
		}
		return nil, err
	}
	saved := resumeState(th.regs)
	flagsAt := uint64(frameOps + opSize*len(ops))
	size := flagsAt + 16
	ripAt := saved.Rsp - 8 - stubRetPop
	f := ripAt - (size - 8)
	frame := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint64(frame[frameFD:], uint64(len(ops)))
	le.PutUint64(frame[frameTimeout+8:], uint64(parkTime.Nanoseconds()))
	le.PutUint64(frame[frameFlagsAt:], flagsAt)
	for i, v := range []uint64{saved.Rax, saved.Rbx, saved.Rcx, saved.Rdx, saved.Rsi, saved.Rdi, saved.Rbp,
		saved.R8, saved.R9, saved.R10, saved.R11, saved.R12, saved.R13, saved.R14, saved.R15} {
		le.PutUint64(frame[frameRegs+8*i:], v)
	}
	for i, o := range ops {
		b := frame[frameOps+opSize*i:]
		le.PutUint64(b, o.word)
		if o.path {
			o.args[1] = stub + stubPathOff
		}
		for j, a := range o.args {
			le.PutUint64(b[8+8*j:], a)
		}
		le.PutUint64(b[opResult:], ^uint64(0))
	}
	if !th.haveMask {
		m, err := getSigMask(th.tid)
		if err != nil {
			return nil, threadErr(th, "signal mask of", err)
		}
		th.mask, th.haveMask = m, true
	}
	mask := th.mask
	le.PutUint64(frame[frameMask:], mask)
	notify := p.notifySignal()
	le.PutUint64(frame[frameNotify:], uint64(int64(notify)))
	if th.inner[1] == 0 {
		th.inner[0], th.inner[1] = innerIDs(p.Pid, th.tid)
	}
	le.PutUint64(frame[frameNotify+8:], uint64(th.inner[0]))
	le.PutUint64(frame[frameNotify+16:], uint64(th.inner[1]))
	// A blocking wait needs the stop to come for sure: a known notification,
	// no function call (which may never return), and not a group leader with
	// other threads (its end is reported only after theirs, which would wait
	// for this tracer).
	alone := true
	for _, o := range p.threads {
		if o != th && o.state != stGone {
			alone = false
		}
	}
	block := notify > 0 && (th.tid != p.Pid || alone)
	for _, o := range ops {
		if o.word&opCall != 0 {
			block = false
		}
	}
	unblocked := sigBit(notify)
	if notify < 0 {
		unblocked = sigBit(int(unix.SIGURG)) | sigBit(int(unix.SIGWINCH))
	}
	le.PutUint64(frame[flagsAt:], saved.Eflags)
	le.PutUint64(frame[flagsAt+8:], saved.Rip)
	if err := p.writev([]Write{{Addr: f, Data: frame}}); err != nil {
		return nil, fmt.Errorf("write injected frame on the stack of thread %d: %w", th.tid, err)
	}
	// From here on the thread is self-sufficient: with only rip and rsp
	// changed (and orig_rax, which no longer matters), it runs the ops and
	// returns to saved whether or not this tracer is still there.
	r := saved
	r.Rip, r.Rsp = stub, f
	if err := setRegs(th.tid, &r); err != nil {
		return nil, threadErr(th, "set registers of", err)
	}
	th.regs, th.haveRegs = saved, true
	// Block the other signals while the ops run, after rip points at the
	// stub (which restores the mask itself if this tracer dies): a signal
	// that keeps coming (an interval timer) would otherwise stop the thread
	// again each time it is resumed, before it ran a single instruction.
	if err := setSigMask(th.tid, ^uint64(0)&^unblocked); err != nil {
		return nil, threadErr(th, "block signals of", err)
	}
	if err := cont(th.tid, 0); err != nil {
		return nil, threadErr(th, "resume", err)
	}
	th.state, th.sigStop = stRunning, false
	var now unix.PtraceRegs
	now.Rip = 1 // not read yet
	done, err := p.awaitStub(th, f, stub, notify, block, &now)
	if err != nil {
		return nil, err
	}
	res := make([]uint64, len(ops))
	buf := make([]byte, flagsAt-frameNotify)
	if err := p.ReadMem(f+frameNotify, buf); err != nil {
		return nil, fmt.Errorf("read injected results: %w", err)
	}
	for i := range res {
		res[i] = le.Uint64(buf[frameOps-frameNotify+opSize*i+opResult:])
	}
	if n := int64(le.Uint64(buf)); notify < 0 && done && n >= 0 && n < 64 {
		// What the stub chose, for the next runs.
		p.notify = int(n)
		if len(p.t.notifies) > 4096 {
			clear(p.t.notifies)
		}
		p.t.notifies[p.Pid] = int(n)
	}
	if now.Rip != stub+stubNotified || !th.sigStop {
		if err := getRegs(th.tid, &now); err != nil {
			return nil, threadErr(th, "registers of", err)
		}
	}
	inStub := now.Rip >= stub && now.Rip < stub+uint64(len(stubCode))
	if done && !inStub {
		// After its last op the stub only notifies, waits and restores,
		// with signals blocked: outside the stub, the thread gave up
		// waiting and returned to its own code (with its own signal mask).
		th.haveRegs = false
		return res, fmt.Errorf("thread %d of pid %d: %w", th.tid, p.Pid, ErrRan)
	}
	// The mask first: should this tracer die in between, the thread is
	// still in the stub, which returns by itself.
	if err := setSigMask(th.tid, mask); err != nil {
		return nil, threadErr(th, "restore signal mask of", err)
	}
	if err := setRegs(th.tid, &saved); err != nil {
		return nil, threadErr(th, "restore registers of", err)
	}
	if !done {
		return nil, fmt.Errorf("injected code in thread %d of pid %d: no result within %v", th.tid, p.Pid, runTimeout)
	}
	return res, nil
}

// awaitStub waits until the stub running in th reports that its ops are done
// and takes th back: at the stop of its notification signal, or, without
// one, by interrupting its final wait (also when runTimeout passes). With
// block it sleeps in wait4 rather than polling. Signals that come meanwhile
// are held back and delivered at Detach. It reports whether the ops were done.
func (p *Process) awaitStub(th *thread, f, stub uint64, notify int, block bool, now *unix.PtraceRegs) (bool, error) {
	deadline := time.Now().Add(runTimeout)
	start := time.Now()
	sleep := 20 * time.Microsecond
	interrupted, done := false, false
	for {
		var ws unix.WaitStatus
		opt := unix.WNOHANG
		if block {
			opt = 0
		}
		r, err := waitTid(th.tid, &ws, opt)
		if err != nil {
			th.state = stDead
			return false, fmt.Errorf("wait for thread %d: %w: %w", th.tid, ErrExited, err)
		}
		if r == th.tid {
			if ws.Exited() || ws.Signaled() {
				p.apply(th, ws)
				return false, fmt.Errorf("thread %d: %w", th.tid, ErrExited)
			}
			ev, sig := stopEvent(ws), int(ws.StopSignal())
			switch {
			case ev == eventStop && interrupted:
				th.state = stStopped
				th.haveRegs = false
				return done, nil
			case ev == 0 && (sig == int(unix.SIGURG) || sig == int(unix.SIGWINCH)) && p.notified(th, stub, now):
				// The notification: the ops are done. Resuming from this
				// signal-delivery-stop with signal 0 discards it (a signal
				// of that number from elsewhere, had one come at the same
				// moment, was one the process ignores anyway).
				th.state, th.sigStop = stStopped, true
				return true, nil
			case ev == 0:
				th.hold(sig) // delivered at detach
			case ev == eventClone:
				if msg, err := eventMsg(th.tid); err == nil && msg != 0 {
					p.addThread(int(msg))
				}
			case ev == eventExec:
				p.apply(th, ws)
				return false, ErrExec
			case ev == eventExit:
				p.apply(th, ws)
				return false, fmt.Errorf("thread %d: %w", th.tid, ErrExited)
			}
			// A group-stop, or a stop we answered above: go on.
			if err := cont(th.tid, 0); err != nil {
				return false, threadErr(th, "resume", err)
			}
			start, sleep = time.Now(), 20*time.Microsecond
			continue
		}
		if !interrupted {
			done = p.word(f+frameDone) == 1
			// Without a notification coming, interrupt the final wait.
			quiet := notify == 0 || (notify < 0 && p.word(f+frameNotify) == 0)
			if (done && quiet) || time.Now().After(deadline) {
				if err := interrupt(th.tid); err != nil {
					return false, threadErr(th, "interrupt", err)
				}
				interrupted = true
				continue
			}
		}
		if time.Since(start) < 200*time.Microsecond {
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			continue
		}
		p.pollOthers(th)
		time.Sleep(sleep)
		if sleep < 500*time.Microsecond {
			sleep *= 2
		}
	}
}

// word reads the 8-byte word at addr (^0 if it cannot).
func (p *Process) word(addr uint64) uint64 {
	var b [8]byte
	local := [1]unix.Iovec{{Base: &b[0], Len: 8}}
	remote := [1]unix.RemoteIovec{{Base: uintptr(addr), Len: 8}}
	if n, err := unix.ProcessVMReadv(p.memTid, local[:], remote[:], 0); err != nil || n != 8 {
		return ^uint64(0)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// notified reports whether th stopped right after the stub's notification;
// it reads th's registers into r.
func (p *Process) notified(th *thread, stub uint64, r *unix.PtraceRegs) bool {
	return getRegs(th.tid, r) == nil && r.Rip == stub+stubNotified
}

func sigBit(sig int) uint64 {
	if sig <= 0 {
		return 0
	}
	return 1 << (sig - 1)
}

// notifySignal returns the signal the stub sends itself when its ops are
// done, so that the thread stops for the tracer at once: SIGURG, else
// SIGWINCH, whichever the process does not catch (their default action is to
// ignore them, and a process that ignores a signal cannot tell that it came;
// while traced, the tracer sees it first and discards it). 0 when the process
// catches both: the tracer then interrupts the stub's final wait. -1 when not
// known yet: the stub chooses (with rt_sigaction) and says which; the choice
// is kept for the next runs in this process by this Tracer. (Should the
// process install a handler between two attaches, the handler could see one
// spurious signal, and only if this tracer died in the microseconds between
// the stub's signal and its stop.)
//
// Before the first run the tracer reads the caught signals from /proc/PID/status
// (SigCgt, what the stub would learn with rt_sigaction): knowing the signal, it can
// sleep in wait4 from the first run on rather than poll.
func (p *Process) notifySignal() int {
	if p.notify < 0 {
		if n, ok := p.t.notifies[p.Pid]; ok {
			p.notify = n
		} else if caught, err := proc.CaughtSignals(p.memTid); err == nil {
			p.notify = 0
			for _, sig := range []int{int(unix.SIGURG), int(unix.SIGWINCH)} {
				if caught&sigBit(sig) == 0 {
					p.notify = sig
					break
				}
			}
			if len(p.t.notifies) > 4096 {
				clear(p.t.notifies)
			}
			p.t.notifies[p.Pid] = p.notify
		}
	}
	return p.notify
}

func (th *thread) hold(sig int) {
	d := deferredSignal{sig: sig}
	if getSigInfo(th.tid, &d.info) != nil {
		return
	}
	th.deferred = append(th.deferred, d)
}

// pollOthers takes the reports of every thread of p but th.
func (p *Process) pollOthers(th *thread) {
	for i := 0; i < len(p.threads); i++ {
		o := p.threads[i]
		if o == th || o.state == stGone {
			continue
		}
		for o.state != stGone && p.poll(o) {
		}
	}
}

// stubAddr returns the address of the stub in the tracee, writing it there
// first if needed. The place is padding that no code runs or reads: the tail
// of the vDSO's last page (after its ELF image), else the tail of the last
// page of an executable segment of a mapped ELF file. Such a place holds
// zeros, or the stub from an earlier run (even of a tracer that died), which
// is reused as it is.
func (p *Process) stubAddr() (uint64, error) {
	if p.stub != 0 {
		return p.stub, nil
	}
	n := uint64(len(stubCode))
	buf := make([]byte, n)
	// Where it was put last time in this pid, if it is still there (the
	// same pid may name another process by now: the bytes must match).
	if a, ok := p.t.stubs[p.Pid]; ok {
		if p.ReadMem(a, buf) == nil && bytes.Equal(buf, stubCode) {
			p.stub = a
			return a, nil
		}
		delete(p.t.stubs, p.Pid)
	}
	try := func(a [2]uint64) bool {
		addr := (a[1] - n) &^ 15
		if addr < a[0] || addr+n > a[1] || p.ReadMem(addr, buf) != nil {
			return false
		}
		if !bytes.Equal(buf, stubCode) {
			if bytes.Count(buf, []byte{0}) != len(buf) || p.pwrite(addr, stubCode) != nil {
				return false
			}
		}
		p.stub = addr
		if len(p.t.stubs) > 4096 {
			clear(p.t.stubs)
		}
		p.t.stubs[p.Pid] = addr
		return true
	}
	if base, err := auxvSysinfo(p.memTid); err == nil && base != 0 {
		// The vDSO image is the whole ELF file, section headers included,
		// padded with zeros to a page.
		if lo, ok := p.elfEnd(base, base, true); ok && try([2]uint64{lo, roundPage(lo)}) {
			return p.stub, nil
		}
	}
	maps, err := proc.Maps(p.Pid)
	if err != nil {
		return 0, p.deadErr(err)
	}
	for _, m := range maps {
		if m.Offset != 0 || m.Inode == 0 {
			continue
		}
		lo, ok := p.elfEnd(m.Start, 0, false)
		if !ok {
			continue
		}
		hi := roundPage(lo)
		for _, x := range maps {
			if x.Executable() && x.Inode == m.Inode && x.Dev == m.Dev && lo >= x.Start && hi <= x.End && hi > lo && try([2]uint64{lo, hi}) {
				return p.stub, nil
			}
		}
	}
	return 0, p.deadErr(fmt.Errorf("no free padding for injected code in the executable mappings of pid %d", p.Pid))
}

func roundPage(v uint64) uint64 { return (v + 4095) &^ 4095 }

// elfEnd reads the ELF header mapped at base and returns where the content of
// its executable segment ends in memory. For the vDSO (image true, bias
// given) the end of the whole image (section headers included) counts.
func (p *Process) elfEnd(base, bias uint64, image bool) (uint64, bool) {
	var eh [64]byte
	if p.ReadMem(base, eh[:]) != nil || !bytes.Equal(eh[:4], []byte("\x7fELF")) || eh[4] != 2 || eh[5] != 1 {
		return 0, false
	}
	le := binary.LittleEndian
	phoff, phentsize, phnum := le.Uint64(eh[32:]), uint64(le.Uint16(eh[54:])), uint64(le.Uint16(eh[56:]))
	if phentsize < 56 || phnum == 0 || phnum > 64 || phoff > 4096 {
		return 0, false
	}
	ph := make([]byte, phentsize*phnum)
	if p.ReadMem(base+phoff, ph) != nil {
		return 0, false
	}
	first := true
	var end uint64
	for i := uint64(0); i < phnum; i++ {
		e := ph[i*phentsize:]
		if le.Uint32(e) != 1 { // PT_LOAD
			continue
		}
		vaddr, memsz := le.Uint64(e[16:]), le.Uint64(e[40:])
		if first && !image {
			bias = base - vaddr&^4095
		}
		first = false
		if le.Uint32(e[4:])&1 != 0 || image { // PF_X
			end = max(end, bias+vaddr+memsz)
		}
	}
	if image {
		shoff, shentsize, shnum := le.Uint64(eh[40:]), uint64(le.Uint16(eh[58:])), uint64(le.Uint16(eh[60:]))
		end = max(end, bias+shoff+shentsize*shnum)
	}
	if end == 0 {
		return 0, false
	}
	return (end + 15) &^ 15, true
}

// auxvSysinfo returns AT_SYSINFO_EHDR (the vDSO base) of pid, 0 if absent.
func auxvSysinfo(pid int) (uint64, error) {
	const atSysinfoEHdr = 33
	v, _, err := proc.AuxvValue(pid, atSysinfoEHdr)
	return v, err
}
