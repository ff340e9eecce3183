// Package upatch applies and removes user-space hot patches in running processes:
// it finds the target ELF in the process, checks its build-id, maps the linked patch
// near it, checks that no thread runs or will return into a replaced function, writes
// a jump at each old function and records a self-describing header in the process.
//
// The work on one process is a short critical section between stopping every thread
// and detaching; everything that does not need the process stopped (parsing, symbol
// lookup, layout planning) happens before it.
//
// # Safety check
//
// A function may only be replaced when no thread is executing it or will return into
// it. With every thread stopped, the engine reads each thread's program counter and
// scans its live stack, from the stack pointer to the end of the mapping that holds it,
// for any 8-byte word that is an address inside a function being replaced (or, for
// unpatch, inside the patch's code). This is conservative: it needs no unwind tables
// and cannot miss a return address, but a stale local variable that happens to hold
// such an address gives a false positive (the patch is retried, then refused with
// ErrBusy naming thread and function); function pointers stored on a stack count too.
package upatch
