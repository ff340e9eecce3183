// Package upatch applies and removes user-space hot patches in running processes:
// it finds the target ELF in the process, checks its build-id, maps the linked patch
// near it, checks that no thread runs or will return into a replaced function, writes
// a jump at each old function and records a self-describing header in the process.
//
// The work on one process is a short critical section between stopping every thread
// and detaching; everything that does not need the process stopped (parsing, symbol
// lookup, layout planning) happens before it, and so does staging: the patch's region
// is mapped, linked and written with a single thread stopped, so the freeze only reads
// the bytes it replaces, checks the threads, and commits.
//
// # Safety check
//
// A function may only be replaced when no thread is executing it or will return into
// it. With every thread stopped, the engine reads each thread's program counter and
// walks its frames with the call-frame information (.eh_frame) of the files the
// process maps, the vDSO included (runtime/unwind): the program counter and every
// return address found must lie outside the functions being replaced (or, for
// unpatch, outside the patch's code). A stale word left in a frame does not count.
// A thread running a signal handler is walked through the signal frame (a return
// address at an rt_sigreturn trampoline, known by its instructions) to the frames
// the signal interrupted, from the registers in the kernel's ucontext, on the stack
// that holds the interrupted stack pointer (another one when the handler runs on a
// sigaltstack); the interrupted instruction counts as a program counter. Where a
// frame cannot be unwound (code without call-frame information, such as an earlier
// patch, or rules given as DWARF expressions), the rest of the stack, from that frame
// to the end of its mapping, is scanned for any 8-byte word that is such an address,
// and so is each stack that a signal frame found there interrupted: conservative, as
// the whole check was before. A busy
// process is retried, then refused with ErrBusy naming thread and function; with
// Options.Timeout the engine instead waits, in the same attach, for each busy thread
// to return from its outermost busy frame (wait.go), and patches once none is busy.
//
// # Where things are
//
//	engine.go   the Engine, its options and results, and every entry point:
//	            Patch, Unpatch, PatchAll, UnpatchAll, Info (PatchBinary in binary.go)
//	batch.go    one operation over many processes, several at a time
//	target.go   the patched ELF in a process, the functions a patch replaces
//	resolve.go  the symbols a patch leaves undefined
//	apply.go    patch one process: what is computed first, then the critical section
//	stage.go    the patch image written before the freeze
//	alloc.go    memory for a patch within reach of its target
//	freeze.go   every thread stopped around an operation, retried while busy
//	safety.go   the check that no thread runs or returns into what is replaced
//	frames.go   the call-frame tables and the walk of each thread's frames
//	sigstack.go the stacks of a thread in a signal handler, its trampolines
//	wait.go     waiting, in the same attach, for busy threads to return
//	jump.go     the jump at each replaced function; padding.go the room for it
//	commit.go   the commit as one step, rollback of a half-applied patch
//	header.go   the header that makes a process self-describing
//	unpatch.go  remove a patch from one process
//	shadow.go   the per-process table of shadow variables (upatch.h) patches share
//	exited.go   telling a process that exited from other failures
package upatch
