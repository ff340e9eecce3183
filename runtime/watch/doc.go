// Package watch stops every new process that starts running a watched executable or loads a
// watched shared library, before that file's own code runs, and reports it so that the caller can
// patch it and let it continue.
//
// # How a process is caught
//
// In the preferred mode ("ebpf-uprobe") Add places a uprobe on the file's first instruction that
// every new image runs: the ELF entry point of an executable, or the earliest initializer of a
// shared library (see [Watcher.Add]). Uprobes are keyed by inode and file offset, so only
// processes that map that exact file hit them; other programs are untouched and pay nothing.
// The probe's program cannot redirect execution on this kernel (writing pt_regs is refused by
// the verifier), so it does the next best thing: it reserves a ring-buffer record, sends SIGSTOP
// to the process with bpf_send_signal, and submits the pid. The signal is pending when the
// breakpoint handler returns, so the process enters group-stop before it executes anything past
// the probed instruction (the kernel single-steps that one instruction out of line first; at an
// entry point it is endbr64 or xor %ebp,%ebp, and at an initializer it is the function's first
// instruction, all without effects the caller cares about). If the ring buffer is full the
// program does not stop the process: a stopped process nobody hears about would hang forever,
// while an unpatched one is only a missed patch, which [Watcher.Missed] counts.
//
// Where eBPF is unavailable, New falls back to the kernel's process-event connector ("proc
// connector" over NETLINK_CONNECTOR). Its exec notification arrives after the new image already
// runs, so the watcher stops the process with SIGSTOP on arrival: best effort, the process may
// have executed some (usually all of its early) code by then. Libraries are matched in this mode
// only if they are already mapped when the notification is handled.
//
// # Copies in other mount namespaces
//
// A container runs its own copy of a host binary: same bytes and GNU build-id, another
// inode. [Watcher.AddWithCopies] watches those too, with one probe per copy: copies that
// running processes map are probed at once, and a copy of an executable that nothing ran
// yet is found by the exec notifications of the proc connector, which stop its first
// process late (as in proc-connector mode); its later processes hit the probe. Files of
// other processes are only ever opened through /proc/PID/map_files and /proc/PID/exe
// (see copies.go). A shared library's copy that no running process maps yet is not
// found: at exec time it is not mapped, and nothing of it is probed.
//
// # Contract with the caller
//
// Every [Event] names a process in group-stop (state T), held there by a pending stop rather
// than by a tracer; the pid is the thread-group id. The caller patches it and then must call
// [Watcher.Resume], also when patching failed, so that the process continues. Close resumes
// every process that was reported and not resumed yet.
//
// Attaching to such a process with ptrace, as measured on 6.18 (see ptrace_test.go):
//   - PTRACE_SEIZE of a group-stopped task makes it re-trap at once: one wait4(__WALL) report,
//     a PTRACE_EVENT_STOP with SIGSTOP, is pending right after the SEIZE. A PTRACE_INTERRUPT
//     after that adds no second report, so SEIZE + INTERRUPT + one wait4 is right, and a
//     second blocking wait4 would hang.
//   - The registers show rip just past the first instruction of the entry point (the kernel
//     single-stepped it) and orig_rax -1 (not inside a system call).
//   - After PTRACE_DETACH (signal 0) the task goes back to group-stop by itself: it is woken
//     and briefly runnable (state R, milliseconds on a loaded machine) but runs no user code,
//     and stays stopped until SIGCONT.
//   - Waiting for state T before reporting matters: a tracer that seized a task whose SIGSTOP
//     is still pending would get it as a signal-delivery-stop, and detaching with signal 0
//     would discard the stop and let the process run before Resume.
package watch
