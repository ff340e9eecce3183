package upatch

import (
	"fmt"

	"golang.org/x/arch/x86/x86asm"

	"github.com/syscare/syscare/runtime/symbols"
)

// Short functions. gcc aligns functions to 16 bytes and fills the gap after a
// function with NOPs (or int3) that are never executed, so a 4-byte function such as
// `lea 1(%rdi),%eax; ret` can still take a 5-byte jump when the bytes after it up to the
// next symbol are padding. roomAfter tells how many bytes follow a function before the
// next symbol; isPadding checks, in the process, that they really are padding.

// roomAfter returns the distance from s to the next symbol that starts after it in
// the same section, capped at maxJumpLen.
func roomAfter(ef *symbols.ELF, s symbols.Symbol) uint64 {
	next := s.Value + maxJumpLen
	ef.Symbols(func(c symbols.Symbol) bool {
		if c.Section == s.Section && c.Value > s.Value && c.Value < next {
			next = c.Value
		}
		return true
	})
	return next - s.Value
}

// isPadding reports whether the first need bytes of b are covered by NOP or INT3
// instructions that lie entirely inside b.
func isPadding(b []byte, need int) error {
	for off := 0; off < need; {
		inst, err := x86asm.Decode(b[off:], 64)
		if err != nil {
			return fmt.Errorf("byte %#x at +%d is not padding", b[off], off)
		}
		if inst.Op != x86asm.NOP && !(inst.Op == x86asm.INT && inst.Len == 1) {
			return fmt.Errorf("instruction %v at +%d is not padding", inst, off)
		}
		off += inst.Len
	}
	return nil
}
