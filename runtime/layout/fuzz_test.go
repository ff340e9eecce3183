package layout

import (
	"errors"
	"hash/fnv"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// hashResolver answers every name with an address derived from its hash: some
// near, some far, some missing, so that fuzzed objects reach every branch.
type hashResolver struct{ near uint64 }

func (h hashResolver) Resolve(name string, pos uint64) (uint64, bool, error) {
	f := fnv.New64a()
	f.Write([]byte(name))
	v := f.Sum64() + pos
	switch v % 4 {
	case 0:
		return 0, false, errors.New("not found")
	case 1:
		return h.near + v%(1<<30), v&8 != 0, nil
	default:
		return v, v&8 != 0, nil
	}
}

func (h hashResolver) TLSModule(name string, pos uint64) (uint64, uint64, error) {
	if len(name)%3 == 0 {
		return 0, 0, errors.New("no TLS")
	}
	return uint64(len(name)%5 + 1), uint64(len(name)) * 8, nil
}

func (h hashResolver) TLSOffset(name string, pos uint64) (int64, error) {
	if len(name)%3 == 0 {
		return 0, errors.New("no TLS")
	}
	return -int64(len(name)) * 8, nil
}

// FuzzLink feeds mutated gcc-built patch objects through the parser, the planner
// and the linker: errors are fine, panics and out-of-image writes are not.
func FuzzLink(f *testing.F) {
	for _, flags := range [][]string{{"-fpie"}, {"-fpic"}, {"-fno-pic"}} {
		f.Add(buildObject(f, fixSrc, flags...), uint64(0x7f0000000000), uint(0), byte(0))
	}
	f.Fuzz(func(t *testing.T, b []byte, base uint64, at uint, val byte) {
		if len(b) > 0 && val != 0 {
			b = append([]byte(nil), b...)
			b[at%uint(len(b))] ^= val
		}
		o, err := patchobj.ParseBytes(b)
		if err != nil {
			return
		}
		p, err := NewPlan(o)
		if err != nil {
			return
		}
		if p.Size() > 16<<20 {
			return // valid but huge (.bss): allocating it only slows the fuzzer
		}
		base &^= pageSize - 1
		img, err := p.Link(base, hashResolver{near: base - 1<<28})
		if err != nil {
			return
		}
		if uint64(len(img.Text)) != p.TextSize || uint64(len(img.Data)) != p.DataSize {
			t.Fatalf("image %d+%d bytes, plan %d+%d", len(img.Text), len(img.Data), p.TextSize, p.DataSize)
		}
		for _, fa := range img.Funcs {
			if fa.New < img.Base || fa.New+fa.NewSize > img.Base+p.TextSize {
				t.Fatalf("function %+v outside the text region", fa)
			}
		}
	})
}
