package unwind

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The table read through the program headers alone has the same segments, the same
// search table and finds the same descriptions as the one read through the section
// headers, for libc, ld.so and the vDSO image of this process.
func TestParseLoadedMatchesSections(t *testing.T) {
	least := map[string]int{"libc.so.6": 1000, "ld-linux-x86-64.so.2": 100, "[vdso]": 3} // descriptions
	for _, name := range []string{"libc.so.6", "ld-linux-x86-64.so.2", "[vdso]"} {
		var image []byte
		var err error
		if name == "[vdso]" {
			image = ownVDSO(t)
		} else {
			out, err := exec.Command("gcc", "-print-file-name="+name).Output()
			if err != nil {
				t.Fatal(err)
			}
			if image, err = os.ReadFile(strings.TrimSpace(string(out))); err != nil {
				t.Fatal(err)
			}
		}
		ef, err := elf.NewFile(bytes.NewReader(image))
		if err != nil {
			t.Fatal(err)
		}
		want, err := ParseImage(ef, image)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := ParseLoaded(image)
		if !ok {
			t.Fatalf("%s: ParseLoaded found no usable .eh_frame_hdr", name)
		}
		if got.MinVaddr != want.MinVaddr || len(got.Loads) != len(want.Loads) || got.Len() != want.Len() || want.Len() < least[name] ||
			got.frameAddr != want.frameAddr || got.hdrAddr != want.hdrAddr || !bytes.Equal(got.index, want.index) {
			t.Fatalf("%s: loaded %d descriptions (frame %#x, min %#x), sections %d (frame %#x, min %#x)", name,
				got.Len(), got.frameAddr, got.MinVaddr, want.Len(), want.frameAddr, want.MinVaddr)
		}
		for i := range got.Loads {
			if got.Loads[i] != want.Loads[i] {
				t.Fatalf("%s: segment %d: %+v, want %+v", name, i, got.Loads[i], want.Loads[i])
			}
		}
		for i := 0; i < want.Len(); i += 7 {
			pc := want.hdrAddr + uint64(int64(int32(le.Uint32(want.index[8*i:]))))
			a, errA := want.find(pc)
			b, errB := got.find(pc)
			if errA != nil || errB != nil || a == nil || b == nil || a.lo != b.lo || a.hi != b.hi || !bytes.Equal(a.insns, b.insns) {
				t.Fatalf("%s: find(%#x): sections %+v %v, loaded %+v %v", name, pc, a, errA, b, errB)
			}
		}
	}
}

// ownVDSO returns the bytes of this process's vDSO mapping, a whole ELF image.
func ownVDSO(t *testing.T) []byte {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(maps), "\n") {
		if !strings.HasSuffix(l, "[vdso]") {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(l, "%x-%x", &lo, &hi); err != nil {
			t.Fatal(err)
		}
		mem, err := os.Open("/proc/self/mem")
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		b := make([]byte, hi-lo)
		if _, err := mem.ReadAt(b, int64(lo)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Fatal("no [vdso] mapping")
	return nil
}

// Files the program headers cannot serve are left to the section headers: no ELF,
// 32-bit, no PT_GNU_EH_FRAME (a relocatable object), headers past the end.
func TestParseLoadedDeclines(t *testing.T) {
	out, err := exec.Command("gcc", "-print-file-name=libc.so.6").Output()
	if err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	obj := t.TempDir() + "/f.o"
	if out, err := exec.Command("gcc", "-c", "-x", "c", "-o", obj, "-").CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	relocatable, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	class32 := bytes.Clone(image)
	class32[4] = 1
	phPastEnd := bytes.Clone(image[:4096])
	phPastEnd[56] = 0xff // phnum
	// The .eh_frame_hdr's pointer to .eh_frame omitted (encoding 0xff), and present
	// but aimed at the last byte of its segment, past every description the search
	// table leads to.
	omitted, misaimed := bytes.Clone(image), bytes.Clone(image)
	hdrOff, segEnd := ehFrameHdr(t, image)
	omitted[hdrOff+1] = 0xff
	misaimed[hdrOff+1] = 0x03 // udata4, absolute
	binary.LittleEndian.PutUint32(misaimed[hdrOff+4:], uint32(segEnd-1))
	cases := map[string][]byte{
		"eh_frame pointer omitted": omitted, "eh_frame pointer misaimed": misaimed,
		"empty": nil, "not ELF": []byte(strings.Repeat("x", 100)), "ELF32": class32,
		"relocatable object": relocatable, "headers past the end": phPastEnd,
		"eh_frame past the end": image[:len(image)/2],
	}
	for name, img := range cases {
		if tab, ok := ParseLoaded(img); ok {
			t.Errorf("%s: ParseLoaded accepted it (%d descriptions)", name, tab.Len())
		}
	}
}

// Garbage never panics ParseLoaded or a lookup in what it accepts.
func FuzzParseLoaded(f *testing.F) {
	f.Add([]byte("\x7fELF\x02\x01"))
	f.Fuzz(func(t *testing.T, image []byte) {
		tab, ok := ParseLoaded(image)
		if !ok {
			return
		}
		for _, pc := range []uint64{0, 0x1000, 0xffffffff} {
			if d, err := tab.find(pc); err == nil && d != nil {
				d.rules(pc)
			}
		}
	})
}

// ehFrameHdr returns the file offset of image's PT_GNU_EH_FRAME segment and the end
// address of the PT_LOAD segment that holds it.
func ehFrameHdr(t *testing.T, image []byte) (off int, segEnd uint64) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_GNU_EH_FRAME {
			continue
		}
		for _, l := range f.Progs {
			if l.Type == elf.PT_LOAD && p.Vaddr >= l.Vaddr && p.Vaddr < l.Vaddr+l.Filesz {
				return int(p.Off), l.Vaddr + l.Filesz
			}
		}
	}
	t.Fatal("no PT_GNU_EH_FRAME inside a PT_LOAD")
	return 0, 0
}
