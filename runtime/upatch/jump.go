package upatch

import "encoding/binary"

// The jump written at each replaced function.

// jumpBytes encodes a jump from at to dest: jmp rel32 when in reach, else
// jmp *0(%rip) followed by the absolute address.
func jumpBytes(at, dest uint64) []byte {
	rel := int64(dest) - int64(at+jmpRel32)
	if rel == int64(int32(rel)) {
		b := make([]byte, jmpRel32)
		b[0] = 0xe9
		binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
		return b
	}
	b := make([]byte, jmpAbs)
	b[0], b[1] = 0xff, 0x25
	binary.LittleEndian.PutUint64(b[6:], dest)
	return b
}
