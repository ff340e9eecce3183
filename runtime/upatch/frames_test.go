package upatch

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/unwind"
)

// A thread whose stack holds stale copies of greet's address, but no frame of greet,
// does not block patching greet: the check walks real frames. A thread sleeping in a
// callee of hold still blocks patching hold: its return address is a real frame.
func TestStaleStackWordsDoNotBlock(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "stale")
	gcc(t, "-O2", "-g", "-pthread", testdata("stale.c"), "-o", bin)
	v := start(t, bin, nil)
	// Both threads in pause(): stale() with its words written, hold() in its callee
	// (a loaded machine may not have run them yet when the first line comes).
	waitBlocked(t, v.pid(), 2, func(nr, _ int64) bool { return nr == 34 }) // 34: pause on x86-64
	v.expect(t, "greet=1")

	e := NewEngine("/")
	_, obj := buildPatch(t, "fix_greet.c", bin, "")
	o := opts(uuid1)
	o.Retries = 1
	if err := e.Patch(v.pid(), obj, o); err != nil {
		t.Fatalf("patch greet with stale words on a stack: %v", err)
	}
	v.expect(t, "greet=2")
	if err := e.Unpatch(v.pid(), uuid1, o); err != nil {
		t.Fatalf("unpatch: %v", err)
	}
	v.expect(t, "greet=1")

	_, holdObj := buildPatch(t, "fix_hold.c", bin, "")
	err := e.Patch(v.pid(), holdObj, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), `"hold"`) || !strings.Contains(err.Error(), "in a frame") {
		t.Fatalf("patch of hold while a thread returns into it: %v, want busy in a frame", err)
	}
	v.alive(t)
}

// Without call-frame information for a frame, the stack above it is scanned word by
// word: a word inside a busy range is then reported, and says why.
func TestBusyFrameFallsBackToWordScan(t *testing.T) {
	const lo = 0x7ffd0000
	stack := make([]byte, 64)
	binary.LittleEndian.PutUint64(stack[40:], 0x401010) // inside the busy range
	busy := []busyRange{{lo: 0x401000, hi: 0x401020, name: "greet"}}
	find := func(a uint64) *busyRange {
		if a >= busy[0].lo && a < busy[0].hi {
			return &busy[0]
		}
		return nil
	}
	regs := unix.PtraceRegs{Rip: 0x500000, Rsp: lo + 16}
	bf := (&frameCheck{find: find}).busyFrame(regs, oneStack(lo, stack))
	r, where := bf.hit, bf.where
	if r == nil || r.name != "greet" || !strings.Contains(where, "could not be unwound") {
		t.Fatalf("busyFrame without tables = %v, %q; want greet found by the word scan", r, where)
	}
	// A word below the stack pointer is not live: not reported.
	binary.LittleEndian.PutUint64(stack[40:], 0)
	binary.LittleEndian.PutUint64(stack[8:], 0x401010)
	if r := (&frameCheck{find: find}).busyFrame(regs, oneStack(lo, stack)).hit; r != nil {
		t.Fatalf("a word below the stack pointer reported busy: %v", r)
	}
}

// On a kernel without PROCMAP_QUERY the freeze reads maps instead: the same check
// blocks and clears the same threads.
func TestCheckWithoutMappingQueries(t *testing.T) {
	testNoQuery = true
	defer func() { testNoQuery = false }()
	TestStaleStackWordsDoNotBlock(t)
}

// oneStack is a thread's stack read from lo, and no other.
func oneStack(lo uint64, b []byte) *threadStacks {
	return &threadStacks{segs: []*stackSeg{{lo: lo, b: b}}}
}

// codeMem is code bytes at fixed addresses, for callSites.
type codeMem map[uint64][]byte

func (c codeMem) ReadMem(addr uint64, b []byte) error {
	for base, code := range c {
		if addr >= base && addr+uint64(len(b)) <= base+uint64(len(code)) {
			copy(b, code[addr-base:])
			return nil
		}
	}
	return errors.New("unmapped")
}

// callAt encodes a direct call at addr to target (5 bytes).
func callAt(addr, target uint64) []byte {
	b := []byte{0xe8, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(int64(target)-int64(addr+5))))
	return b
}

// In busy code without call-frame information (a patch), the frame the thread
// leaves to is the first word above that follows a direct call of a replaced
// function: words that follow no call, or a call of something else, are passed over.
func TestCallSiteFindsTheCaller(t *testing.T) {
	const lo, code, entry = 0x7ffd0000, 0x401000, 0x401800
	patch := busyRange{lo: 0x500000, hi: 0x501000, name: "greet"}
	find := func(a uint64) *busyRange {
		if a >= patch.lo && a < patch.hi {
			return &patch
		}
		return nil
	}
	text := make([]byte, 0x1000)
	copy(text[0x100:], []byte{0x90, 0x90, 0x90, 0x90, 0x90}) // no call before 0x401105
	copy(text[0x200:], callAt(code+0x200, code+0x600))       // a call of something else
	copy(text[0x300:], callAt(code+0x300, entry))            // the call of the replaced function
	mods := []unwind.Module{{Lo: code, Hi: code + 0x1000}}
	stack := make([]byte, 64)
	for i, w := range []uint64{code + 0x105, code + 0x205, code + 0x305} {
		binary.LittleEndian.PutUint64(stack[8+8*i:], w)
	}
	regs := unix.PtraceRegs{Rip: 0x500010, Rsp: lo + 8}
	sites := &callSites{code: codeMem{code: text}, entries: map[uint64]bool{entry: true}, mods: mods}
	check := &frameCheck{mods: mods, find: find, sites: sites}
	bf := check.busyFrame(regs, oneStack(lo, stack))
	if bf.hit == nil || bf.stuck != "" || bf.leave.PC != code+0x305 || bf.leave.PCAt != lo+24 {
		t.Fatalf("busyFrame = %+v; want greet busy, leaving to %#x through the slot at %#x", bf, code+0x305, lo+24)
	}
	// Without the replaced function among the entries, no caller is found: the thread
	// cannot be waited for (and is still busy).
	sites.entries = nil
	if bf := check.busyFrame(regs, oneStack(lo, stack)); bf.hit == nil || bf.stuck == "" {
		t.Fatalf("busyFrame without entries = %+v; want busy and not waitable", bf)
	}
}
