// Package ptrace is the only package that issues ptrace, wait4, process_vm_* and /proc/pid/mem requests.
//
// A Tracer owns one goroutine locked to one OS thread: Linux binds a tracee to
// the thread that attached it, so every ptrace and wait4 request of a Tracer
// runs there. Methods called from another goroutine hand their work over to
// that thread (a few microseconds each); Tracer.Do runs a whole closure there,
// so a caller can do a complete freeze (attach, inspect, inject, write,
// detach) without any handoff. Several Tracers may run in parallel.
//
// Waiting never uses wait4(-1): a thread that is the real parent of a process
// traced by another thread of this process would take that tracee's stops. It
// names each thread with __WNOTHREAD, and polls a whole process where one
// thread's progress can depend on another's report (execve, a dying group
// leader). PTRACE_O_TRACEEXIT is not used (exit stops deadlock execve), and a
// watchdog reaps traced zombies when a seize waits on an execve.
//
// Known limits: a thread in an uninterruptible sleep delays the attach until
// it wakes (an error after 2 s of polling for the leader; a blocking wait for
// other threads, and for a leader alone that entered the sleep after the
// tracer looked); an injected syscall that a seccomp filter forbids fails or
// kills the process; a process exec'ing during Attach gives ErrExec even if
// its new image could have been attached.
//
// The package is written for x86-64 (the injected code and register layout).
//
// Two lighter forms of holding a process: AttachThread stops a single thread
// (enough to inject a call that needs no stopped process, such as mapping new
// memory), and RunUntil lets a stopped process run again, still attached,
// until a thread stops itself at a given place (run.go), then stops every
// thread again.
//
// # Surviving the death of the tracer
//
// Whoever uses this package can be killed at any instant (SIGKILL, the OOM
// killer, a crash, a host shutdown); the kernel then detaches every tracee and
// lets it run. PTRACE_O_EXITKILL would kill them instead, so it is never set.
// What a tracee must not suffer is therefore decided by what the tracer leaves
// in it, and the rule is: whatever the tracer changes in a thread restores
// itself if the tracer disappears.
//
// Stopping and resuming change nothing (an interrupt stop is a plain stop).
// The one thing that changes a thread is running code in it, for an injected
// system call (mmap, mprotect, munmap) or a function call (an IFUNC resolver).
// An earlier design pointed rip at a `syscall` instruction and single-stepped
// the thread over it: had the tracer died in between, the thread kept the trap
// flag (and died of SIGTRAP at its next instruction) or resumed in the middle
// of the vDSO with the call's arguments and result in its registers (and died
// of SIGSEGV). Here, instead:
//
//   - The code that runs is a stub (testdata/stub_amd64.s) placed in padding
//     that no code runs or reads: the zero tail of the vDSO's last page, else of
//     the last page of an ELF file's executable segment. It is written before
//     any thread is pointed at it, and always with the same bytes, so it can be
//     reused (or rewritten) while a thread left over from a dead tracer is still
//     inside it.
//   - The tracer writes a frame on the thread's stack, 256 bytes below its stack
//     pointer (past the 128-byte red zone, which the interrupted code may use):
//     the ops to run, and every register the stub touches, rflags, rip and the
//     signal mask. It then changes only rip (to the stub) and rsp (to the frame).
//     The stub runs the ops, sets a done flag, sends itself a notification
//     signal, waits on the flag for a bounded time (a futex wait of 250 ms),
//     then reloads every register, the signal mask and rflags and returns with
//     `ret 256`, which sets rip and rsp at once. So the thread completes the
//     work and resumes its own code with nothing changed, whether the tracer is
//     there or not. No single-step is ever used: nothing can leave a trap flag
//     behind.
//   - The notification is SIGURG, else SIGWINCH: one the process does not catch
//     (the stub checks with rt_sigaction the first time; the choice is kept per
//     pid). Their default action is to ignore them, so once untraced the thread
//     discards it; while traced it stops the thread for the tracer at once, and
//     the tracer, asleep in wait4, discards it. A process that catches both gets
//     no signal: the tracer polls the done flag and interrupts the final wait.
//   - A thread stopped inside a system call (blocking read, sleep) would have its
//     call restarted by the kernel according to orig_rax and the -ERESTART* code
//     in rax, which must not happen on the stub. The tracer first turns such a
//     state into the one the restart logic produces (rip back on the syscall
//     instruction, rax the call number or restart_syscall, orig_rax -1): a plain
//     user-space state, valid in any stop and the one the stub returns to.
//   - While the stub runs, the tracer blocks every other signal of the thread
//     (PTRACE_SETSIGMASK) after pointing it at the stub; the stub restores the
//     mask itself. A signal that keeps coming, such as an interval timer, would
//     otherwise stop the thread each time it is resumed before it ran a single
//     instruction (which is how a test failed under load).
//   - Having taken the thread back, the tracer puts the mask back, then the
//     registers (in that order: dying in between leaves the thread in the stub,
//     which returns by itself). Should the tracer be starved for longer than the
//     final wait, the thread returns by itself and the run reports ErrRan, so
//     that a caller who relied on the thread being stopped can retry.
//
// Ops can also commit several writes as one step: OpenSelfMem, WriteTableOp and
// CloseFDOp make the thread write a table of (address, bytes) through its own
// /proc/self/mem, so a batch of jumps into read-only text is written entirely
// even if the tracer dies after starting it; IfOK chains an op (munmap) to the
// success of the writes. Where the process cannot open its /proc/self/mem (no
// /proc in its mount namespace, a seccomp filter) the results say so, and the
// caller falls back to writing from the tracer, with its own record of what is
// half done.
//
// What remains: a mapping created by an injected mmap is leaked if the tracer
// dies before the caller recorded it anywhere (it is never executed); a signal
// that arrives during an injection is delivered at Detach, or, if the tracer
// died, as soon as the stub restores the mask; if the tracer dies while a
// thread runs a table write, the other threads are let go while that thread
// finishes it (microseconds, more if it is descheduled), so they may briefly
// run with part of the writes done (parking every thread in a stub that waits
// for the writer would close this window, at about 25 µs of freeze per
// thread on a slow machine); a process that installs a SIGURG handler between two attaches by one
// Tracer may see one spurious SIGURG if that tracer dies in the microseconds
// between the stub's signal and its stop. The stub sits in padding that another
// version of it may occupy; that one is left alone and other padding is used.
package ptrace
