package ptrace

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw requests. ptrace requests never block, so they use RawSyscall (no
// scheduler bookkeeping); pointers are converted inside the call expression,
// the only place where the Go rules keep them valid.

// seizeOptions: clone events catch threads created during the attach, exec
// events reveal an execve that replaced the image. PTRACE_O_TRACEEXIT is
// deliberately absent: exit stops deadlock against execve (the thread in
// execve holds cred_guard_mutex and waits for the other threads to die, they
// wait in their exit stops for the tracer, and the tracer's PTRACE_SEIZE of
// the execve thread waits for cred_guard_mutex). PTRACE_O_EXITKILL is absent
// too: if the tool dies, its tracees must live on (the kernel detaches them).
const seizeOptions = unix.PTRACE_O_TRACECLONE | unix.PTRACE_O_TRACEEXEC

const (
	eventClone = unix.PTRACE_EVENT_CLONE
	eventExec  = unix.PTRACE_EVENT_EXEC
	eventExit  = unix.PTRACE_EVENT_EXIT
	eventStop  = unix.PTRACE_EVENT_STOP
)

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func ptraceReq(req, tid int, addr, data uintptr) error {
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, uintptr(req), uintptr(tid), addr, data, 0, 0)
	return errnoErr(e)
}

func seize(tid int) error { return ptraceReq(unix.PTRACE_SEIZE, tid, 0, seizeOptions) }

func interrupt(tid int) error { return ptraceReq(unix.PTRACE_INTERRUPT, tid, 0, 0) }

func cont(tid, sig int) error { return ptraceReq(unix.PTRACE_CONT, tid, 0, uintptr(sig)) }

func detachThread(tid, sig int) error { return ptraceReq(unix.PTRACE_DETACH, tid, 0, uintptr(sig)) }

func getRegs(tid int, r *unix.PtraceRegs) error {
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_GETREGS, uintptr(tid), 0, uintptr(unsafe.Pointer(r)), 0, 0)
	return errnoErr(e)
}

func setRegs(tid int, r *unix.PtraceRegs) error {
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_SETREGS, uintptr(tid), 0, uintptr(unsafe.Pointer(r)), 0, 0)
	return errnoErr(e)
}

// PTRACE_GETSIGMASK and PTRACE_SETSIGMASK (Linux 3.11) read and set a
// stopped tracee's blocked-signal mask.
const (
	ptraceGetSigMask = 0x420a
	ptraceSetSigMask = 0x420b
)

func getSigMask(tid int) (uint64, error) {
	var m uint64
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, ptraceGetSigMask, uintptr(tid), 8, uintptr(unsafe.Pointer(&m)), 0, 0)
	return m, errnoErr(e)
}

func setSigMask(tid int, m uint64) error {
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, ptraceSetSigMask, uintptr(tid), 8, uintptr(unsafe.Pointer(&m)), 0, 0)
	return errnoErr(e)
}

func eventMsg(tid int) (uint64, error) {
	var msg uint64
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_GETEVENTMSG, uintptr(tid), 0, uintptr(unsafe.Pointer(&msg)), 0, 0)
	return msg, errnoErr(e)
}

// sigInfo is the kernel's siginfo_t, kept opaque.
type sigInfo [128]byte

func getSigInfo(tid int, si *sigInfo) error {
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_GETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(si)), 0, 0)
	return errnoErr(e)
}

func setSigInfo(tid int, si *sigInfo) error {
	_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_SETSIGINFO, uintptr(tid), 0, uintptr(unsafe.Pointer(si)), 0, 0)
	return errnoErr(e)
}

// wait4 blocks (unless WNOHANG is in options) for a tracee event. It runs
// through Syscall6, not RawSyscall6, because it blocks.
func wait4(pid int, ws *unix.WaitStatus, options int) (int, error) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_WAIT4, uintptr(pid), uintptr(unsafe.Pointer(ws)), uintptr(options), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		return int(r), errnoErr(e)
	}
}

// waitTid waits for a report of one tracee. Waits always name the thread,
// with __WNOTHREAD, and never use wait4(-1): the kernel lets a thread that is
// the real parent of a process traced by another thread of the same process
// take that tracee's stops ("traced by its real parent's group"), so in a
// process running several Tracers, wait4(-1) on one tracer thread can steal
// the reports another one waits for.
func waitTid(tid int, ws *unix.WaitStatus, options int) (int, error) {
	return wait4(tid, ws, options|unix.WALL|unix.WNOTHREAD)
}

// stopEvent returns the PTRACE_EVENT_* number of a stop status (0 for a
// signal-delivery-stop).
func stopEvent(ws unix.WaitStatus) int { return int(ws) >> 16 }
