// Package kpatch loads, enables, disables and unloads kernel livepatch modules through
// finit_module(2), /sys/kernel/livepatch and delete_module(2), and reads their state
// back from sysfs so that a restarted caller knows what is loaded and enabled.
//
// # Kernel model (Linux >= 5.1)
//
// A livepatch module calls klp_enable_patch from its init function, so loading the
// module is what enables the patch. The kernel then switches every task to the new
// functions one at a time (the "transition"): a task switches when none of the patched
// functions is on its stack. /sys/kernel/livepatch/<name>/transition is 1 until every
// task has switched; /proc/<pid>/task/<tid>/patch_state tells which tasks have not.
// Writing the opposite value to enabled during a transition reverses it. Once a patch
// is disabled and its transition ends the kernel frees it and its sysfs directory
// disappears, while the module stays loaded: such a patch can only be enabled again
// by unloading and reloading its module.
//
// # States
//
// Status reads /sys/module/<name> and /sys/kernel/livepatch/<name>: a module is
// Unloaded, Loaded (module present, patch freed: disabled), Enabled, or in a
// transition (Enabling, Disabling).
//
// Everything that changes the system goes through a Syscalls value and a root
// directory (sysfs and procfs below it), so tests can drive the state machine on a
// temporary tree; the real kernel is exercised by tests/kernel under qemu.
package kpatch
