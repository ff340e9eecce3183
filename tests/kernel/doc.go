// Package kernel tests runtime/kpatch against a real kernel: Debian's kernel boots under
// qemu (TCG) with an initramfs holding livepatch modules built against the matching
// headers and a static guest program (./guest) that drives runtime/kpatch.
package kernel
