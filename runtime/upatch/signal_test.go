package upatch

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/unwind"
)

// startSigHold starts testdata/sighold.c in mode, has its worker take the signal
// (the handler then waits), and builds the patch replacing spin().
func startSigHold(t *testing.T, mode string) (*victim, *Engine, Options) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sighold")
	gcc(t, "-O2", "-g", "-pthread", testdata("sighold.c"), "-o", bin)
	v := start(t, bin, nil, mode)
	v.send(t, "g\n", func(l string) bool { return l == "handler" })
	o := opts(uuid1)
	o.Retries = 1
	return v, NewEngine("/"), o
}

func isLine(want string) func(string) bool { return func(l string) bool { return l == want } }

// signalBusy checks that a thread interrupted inside spin() by a signal whose handler
// has not returned makes the patch busy, found by walking through the signal frame
// (where says how); then that, with a timeout, the engine waits for the handler to
// return and spin() to be left, and patches then.
func signalBusy(t *testing.T, mode, where string) {
	v, e, o := startSigHold(t, mode)
	bin := v.cmd.Path
	_, obj := buildPatch(t, "fix_spin.c", bin, "")
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), `"spin"`) ||
		!strings.Contains(err.Error(), where) {
		t.Fatalf("patch of spin while a signal handler interrupted it (%s): %v, want busy, %s", mode, err, where)
	}
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("patch applied while busy: %+v", applied)
	}

	o.Timeout = 10 * time.Second
	done := make(chan error, 1)
	go func() { done <- e.Patch(v.pid(), obj, o) }()
	select {
	case err := <-done:
		t.Fatalf("patch returned while the handler had not returned (%s): %v", mode, err)
	case <-time.After(300 * time.Millisecond):
	}
	if line := v.send(t, "r\n", func(l string) bool { return strings.HasPrefix(l, "spin=") }); line != "spin=1" {
		t.Fatalf("the interrupted call printed %q, want the old spin=1", line)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("patch once the handler returned and spin() was left (%s): %v", mode, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("patch did not finish after spin() was left")
	}
	if line := v.send(t, "g\n", func(l string) bool { return strings.HasPrefix(l, "spin=") }); line != "spin=2" {
		t.Fatalf("after the patch the worker printed %q, want spin=2", line)
	}
	if line := v.send(t, "s\n", func(l string) bool { return strings.HasPrefix(l, "spin=") }); line != "spin=2" {
		t.Fatalf("after the patch the main thread printed %q, want spin=2", line)
	}
}

// A handler on a sigaltstack: the interrupted frames are on the thread's own
// stack, which the check must reach through the signal frame. The signal
// interrupted spin() itself, or load(), called by spin(): then only spin's return
// address, on the thread's own stack, tells that it is busy.
func TestSignalOnAltStackInReplacedFunction(t *testing.T) {
	t.Run("itself", func(t *testing.T) { signalBusy(t, "alt", "interrupted there by a signal") })
	t.Run("callee", func(t *testing.T) { signalBusy(t, "altdeep", "in a frame below a signal handler") })
}

// A handler on the thread's own stack: the interrupted frames are walked, not only
// word-scanned, so the engine knows where spin() returns and can wait for it.
func TestSignalOnOwnStackInReplacedFunction(t *testing.T) {
	t.Run("itself", func(t *testing.T) { signalBusy(t, "normal", "interrupted there by a signal") })
	t.Run("callee", func(t *testing.T) { signalBusy(t, "normaldeep", "in a frame below a signal handler") })
}

// A handler on a sigaltstack that interrupted other(), whose frame holds stale copies
// of spin's address: the interrupted frames are walked, so spin() is not busy.
func TestSignalOnAltStackElsewhereDoesNotBlock(t *testing.T) {
	v, e, o := startSigHold(t, "other")
	_, obj := buildPatch(t, "fix_spin.c", v.cmd.Path, "")
	if err := e.Patch(v.pid(), obj, o); err != nil {
		t.Fatalf("patch of spin while a handler interrupted other(): %v", err)
	}
	if line := v.send(t, "r\n", func(l string) bool { return strings.HasPrefix(l, "other=") }); line != "other=0" {
		t.Fatalf("the interrupted call printed %q, want other=0", line)
	}
	if line := v.send(t, "s\n", func(l string) bool { return strings.HasPrefix(l, "spin=") }); line != "spin=2" {
		t.Fatalf("after the patch: %q, want spin=2", line)
	}
}

// Unpatch while a signal handler on a sigaltstack interrupted load(), called by the
// patch's spin(): the patch is busy (the patch's own frame has no call-frame
// information: its caller is found by the call site), and the engine waits for the
// handler to return and the new spin() to be left.
func TestSignalOnAltStackBelowPatch(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sighold")
	gcc(t, "-O2", "-g", "-pthread", testdata("sighold.c"), "-o", bin)
	v := start(t, bin, nil, "altdeep")
	e, o := NewEngine("/"), opts(uuid1)
	o.Retries = 1
	_, obj := buildPatch(t, "fix_spin_load.c", bin, "")
	if err := e.Patch(v.pid(), obj, o); err != nil {
		t.Fatalf("patch of spin with no thread in it: %v", err)
	}
	v.send(t, "g\n", isLine("handler"))
	err := e.Unpatch(v.pid(), uuid1, o)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), `"spin"`) || !strings.Contains(err.Error(), "below a signal handler") {
		t.Fatalf("unpatch while a handler interrupted the new spin's callee: %v, want busy below a signal handler", err)
	}
	o.Timeout = 10 * time.Second
	done := make(chan error, 1)
	go func() { done <- e.Unpatch(v.pid(), uuid1, o) }()
	select {
	case err := <-done:
		t.Fatalf("unpatch returned while the handler had not returned: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if line := v.send(t, "r\n", func(l string) bool { return strings.HasPrefix(l, "spin=") }); line != "spin=2" {
		t.Fatalf("the interrupted call printed %q, want the patched spin=2", line)
	}
	if err := <-done; err != nil {
		t.Fatalf("unpatch once the new spin() was left: %v", err)
	}
	if line := v.send(t, "s\n", func(l string) bool { return strings.HasPrefix(l, "spin=") }); line != "spin=1" {
		t.Fatalf("after unpatch: %q, want spin=1", line)
	}
}

// The synthetic address space of the signal-frame unit tests: an alternate signal
// stack at alt, the thread's own stack at own, code at code with the rt_sigreturn
// trampoline at tram, and the busy function spin at 0x402000.
const (
	alt, own   = 0x10000, 0x7ffd0000
	code, tram = 0x401000, 0x401100
)

// sigAddressSpace returns spin's busy range, the lookup that finds it, and the code
// page with the trampoline's instructions at tram.
func sigAddressSpace(trampoline []byte) (*busyRange, func(uint64) *busyRange, []byte) {
	busy := &busyRange{lo: 0x402000, hi: 0x402100, name: "spin"}
	find := func(a uint64) *busyRange {
		if a >= busy.lo && a < busy.hi {
			return busy
		}
		return nil
	}
	text := make([]byte, 0x1000)
	copy(text[tram-code:], trampoline)
	return busy, find, text
}

// Where the walk cannot unwind a handler's frame, the word scan of its stack finds
// the signal frame (a trampoline's address followed by a ucontext) and goes on to
// the stack the signal interrupted: a busy word there, or a busy interrupted
// instruction, makes the thread busy; a stack it cannot read leaves it unchecked;
// a copy of the trampoline's address without a kernel-written frame is passed over.
func TestWordScanFollowsSignalFrames(t *testing.T) {
	busy, find, text := sigAddressSpace([]byte{0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05})
	mods := []unwind.Module{{Lo: code, Hi: code + 0x1000}} // no table: nothing is walked
	// The handler's stack: a frame of 3 words, the trampoline's address, the ucontext.
	frame := func(cs, rip, rsp uint64) []byte {
		b := make([]byte, 32+unwind.SigFrameSize+64)
		binary.LittleEndian.PutUint64(b[24:], tram)
		uc := b[32:]
		binary.LittleEndian.PutUint64(uc[40+15*8:], rsp)
		binary.LittleEndian.PutUint64(uc[40+16*8:], rip)
		binary.LittleEndian.PutUint64(uc[40+18*8:], cs)
		return b
	}
	interruptedStack := make([]byte, 256)
	binary.LittleEndian.PutUint64(interruptedStack[64:], busy.lo+8) // a return address into spin
	check := func(altStack []byte, readable bool) busyFrames {
		ts := &threadStacks{segs: []*stackSeg{{lo: alt, b: altStack}}}
		if readable {
			ts.read = func(sp uint64) (*stackSeg, error) {
				if sp < own || sp >= own+uint64(len(interruptedStack)) {
					return nil, errors.New("unmapped")
				}
				return &stackSeg{lo: sp, b: interruptedStack[sp-own:]}, nil
			}
		}
		c := &frameCheck{mods: mods, find: find, sigs: &sigreturns{code: codeMem{code: text}, mods: mods}}
		return c.busyFrame(unix.PtraceRegs{Rip: code + 0x10, Rsp: alt}, ts)
	}
	if bf := check(frame(0x33, code+0x20, own+8), true); bf.hit != busy || !strings.Contains(bf.where, "could not be unwound") || bf.stuck == "" {
		t.Errorf("busy word on the interrupted stack: %+v; want spin busy, found by the scan, not waitable", bf)
	}
	if bf := check(frame(0x33, busy.lo+4, own+128), true); bf.hit != busy || !strings.Contains(bf.where, "interrupted by a signal") {
		t.Errorf("interrupted inside spin: %+v; want spin busy, interrupted by a signal", bf)
	}
	if bf := check(frame(0x33, code+0x20, own+128), true); bf.hit != nil || bf.unchecked != "" {
		t.Errorf("nothing busy above the interrupted stack pointer: %+v; want not busy", bf)
	}
	if bf := check(frame(0x33, code+0x20, own+8), false); bf.hit != nil || !strings.Contains(bf.unchecked, "cannot be read") {
		t.Errorf("interrupted stack unreadable: %+v; want the thread unchecked", bf)
	}
	if bf := check(frame(0, code+0x20, own+8), true); bf.hit != nil || bf.unchecked != "" {
		t.Errorf("a copy of the trampoline's address without a signal frame: %+v; want it passed over", bf)
	}
	// A frame that says the signal interrupted its own stack where it is: followed
	// once, not forever.
	if bf := check(frame(0x33, code+0x20, alt+24), true); bf.hit != nil || bf.unchecked != "" {
		t.Errorf("a signal frame naming itself: %+v; want not busy", bf)
	}
	// Without recognition of the trampoline (the scan before signal frames were
	// followed) the busy frame on the interrupted stack was never seen.
	ts := &threadStacks{segs: []*stackSeg{{lo: alt, b: frame(0x33, code+0x20, own+8)}}}
	if bf := (&frameCheck{mods: mods, find: find}).busyFrame(unix.PtraceRegs{Rip: code + 0x10, Rsp: alt}, ts); bf.hit != nil {
		t.Errorf("without signal frames: %+v; the interrupted stack should not be reached", bf)
	}
}

// A thread stopped in the trampoline itself (its handler returned, rt_sigreturn not
// yet made), at its first instruction or at its syscall, is in a signal frame whose
// ucontext is at its stack pointer: the walk goes on to the interrupted stack. A
// frame naming itself again and again is followed a bounded number of times, and
// leaves the thread unchecked.
func TestWalkFromTrampoline(t *testing.T) {
	busy, find, text := sigAddressSpace([]byte{0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05})
	ucontext := func(rip, rsp uint64) []byte {
		uc := make([]byte, unwind.SigFrameSize+64)
		binary.LittleEndian.PutUint64(uc[40+15*8:], rsp)
		binary.LittleEndian.PutUint64(uc[40+16*8:], rip)
		binary.LittleEndian.PutUint64(uc[40+18*8:], 0x33)
		return uc
	}
	interruptedStack := make([]byte, 64)
	binary.LittleEndian.PutUint64(interruptedStack[16:], busy.lo+8) // found by the scan there
	walk := func(rip uint64, uc []byte) busyFrames {
		ts := &threadStacks{segs: []*stackSeg{{lo: alt, b: uc}}, read: func(sp uint64) (*stackSeg, error) {
			if sp != own {
				return nil, errors.New("unmapped")
			}
			return &stackSeg{lo: own, b: interruptedStack}, nil
		}}
		c := &frameCheck{find: find, sigs: &sigreturns{code: codeMem{code: text}}}
		return c.busyFrame(unix.PtraceRegs{Rip: rip, Rsp: alt}, ts)
	}
	for _, rip := range []uint64{tram, tram + 5} {
		if bf := walk(rip, ucontext(code+0x20, own)); bf.hit != busy || bf.unchecked != "" {
			t.Errorf("stopped at %#x in the trampoline: %+v; want spin busy on the interrupted stack", rip, bf)
		}
	}
	if bf := walk(tram+2, ucontext(code+0x20, own)); bf.hit != nil {
		t.Errorf("stopped inside the mov, not an instruction of the trampoline: %+v; want the signal frame not followed", bf)
	}
	if bf := walk(tram, ucontext(tram, alt)); bf.hit != nil || !strings.Contains(bf.unchecked, "nested signal frames") {
		t.Errorf("a signal frame that interrupted itself: %+v; want the thread unchecked", bf)
	}
}
