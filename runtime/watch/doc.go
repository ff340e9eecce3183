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
// # Contract with the caller
//
// Every [Event] names a process in group-stop. The caller patches it (for example PTRACE_SEIZE,
// PTRACE_INTERRUPT, write memory, PTRACE_DETACH: the process stays in group-stop after the
// detach) and then must call [Watcher.Resume], also when patching failed, so that the process
// continues. Close resumes every process that was reported and not resumed yet.
package watch
