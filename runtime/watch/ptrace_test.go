package watch

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/arch/x86/x86asm"
	"golang.org/x/sys/unix"
)

// TestPtraceWhileGroupStopped runs, on a reported process, the sequence the helper uses to
// patch it: PTRACE_SEIZE + PTRACE_INTERRUPT + wait, read registers, write memory,
// PTRACE_DETACH, then Resume. It checks that the tracee sits at the entry point, that the
// write is what main then reads, and that the detached process stays stopped until Resume.
// The victim runs under a shell so that, as for the helper, the tracer is not its parent.
func TestPtraceWhileGroupStopped(t *testing.T) {
	for _, path := range []string{fix.pie, fix.noPIE} {
		t.Run(filepathBase(path), func(t *testing.T) {
			w := newEBPF(t)
			if err := w.Add(path); err != nil {
				t.Fatal(err)
			}
			sh := start(t, "/bin/sh", "-c", path+"; echo exit=$?")
			ev := nextEvent(t, w)
			assertStopped(t, ev.Pid)

			entry, flagAddr := entryAndFlag(t, path)
			bias := loadBias(t, ev.Pid, path)
			res := make(chan ptraceResult, 1)
			go func() { res <- patchStopped(ev.Pid, flagAddr+bias) }()
			r := <-res
			for _, l := range r.log {
				t.Log(l)
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			// The package doc tells the helper to wait exactly once; hold the kernel to it.
			if !r.seizeReport || r.interruptReport {
				t.Errorf("report after SEIZE %v (want a PTRACE_EVENT_STOP), after INTERRUPT %v (want none)", r.seizeReport, r.interruptReport)
			}
			// The kernel single-steps the probed instruction before the stop takes effect,
			// so the process is stopped right after the first instruction of _start.
			first := firstInsnLen(t, path, entry)
			if r.rip != entry+bias && r.rip != entry+bias+first {
				t.Errorf("stopped at %#x, want the entry point %#x or %#x after its first instruction", r.rip, entry+bias, entry+bias+first)
			}
			// Detached from a group-stop, the process must go back to group-stop, not run
			// main. The kernel wakes it on detach so that it re-enters the stop by itself:
			// it is briefly runnable (state R), for milliseconds on a loaded machine.
			if err := waitStopped(ev.Pid); err != nil {
				t.Fatal(err)
			}
			assertStopped(t, ev.Pid)
			if out := sh.output(t); out != "" {
				t.Fatalf("printed %q before Resume", out)
			}
			if err := w.Resume(ev.Pid); err != nil {
				t.Fatal(err)
			}
			if out := sh.finish(t); out != "main flag=1\ndone\nexit=0\n" {
				t.Fatalf("output %q, want the patched flag", out)
			}
		})
	}
}

type ptraceResult struct {
	seizeReport, interruptReport bool // a wait4 report was pending after SEIZE / after INTERRUPT
	rip                          uint64
	log                          []string
	err                          error
}

// patchStopped is the helper's sequence, on one locked OS thread as ptrace requires.
func patchStopped(pid int, flagAddr uint64) (r ptraceResult) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	logf := func(f string, a ...any) { r.log = append(r.log, fmt.Sprintf(f, a...)) }

	if err := unix.PtraceSeize(pid); err != nil {
		r.err = fmt.Errorf("seize: %w", err)
		return r
	}
	// What does the tracer see right after seizing a group-stopped task, before INTERRUPT?
	// Seizing a group-stopped task makes it re-trap into a ptrace-stop at once; the report is
	// pending before PTRACE_INTERRUPT, and the INTERRUPT adds no second one.
	if st, ok := pollWait(pid, 0); ok {
		r.seizeReport = ok && st.Stopped() && uint32(st)>>16 == unix.PTRACE_EVENT_STOP
		logf("after SEIZE: %s", describe(st))
	} else {
		logf("after SEIZE: nothing to wait for")
	}
	if err := unix.PtraceInterrupt(pid); err != nil {
		r.err = fmt.Errorf("interrupt: %w", err)
		return r
	}
	st, ok := pollWait(pid, 100*time.Millisecond)
	if ok {
		r.interruptReport = true
		logf("after INTERRUPT: %s", describe(st))
	} else {
		logf("after INTERRUPT: nothing more to wait for")
	}
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		r.err = fmt.Errorf("getregs (tracee not in a ptrace-stop?): %w", err)
		return r
	}
	r.rip = regs.Rip
	logf("rip %#x orig_rax %d", regs.Rip, int64(regs.Orig_rax))
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	if _, err := unix.PtracePokeData(pid, uintptr(flagAddr), one[:]); err != nil {
		r.err = fmt.Errorf("poke %#x: %w", flagAddr, err)
		return r
	}
	if err := unix.PtraceDetach(pid); err != nil {
		r.err = fmt.Errorf("detach: %w", err)
		return r
	}
	return r
}

// pollWait waits for a ptrace report of pid for at most d (0: just look).
func pollWait(pid int, d time.Duration) (unix.WaitStatus, bool) {
	deadline := time.Now().Add(d)
	for {
		var st unix.WaitStatus
		got, err := unix.Wait4(pid, &st, unix.WNOHANG|unix.WALL, nil)
		if err == nil && got == pid {
			return st, true
		}
		if err != nil && !errors.Is(err, unix.EINTR) || time.Now().After(deadline) {
			return 0, false
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func describe(st unix.WaitStatus) string {
	if !st.Stopped() {
		return fmt.Sprintf("status %#x (not a stop)", uint32(st))
	}
	s := fmt.Sprintf("stopped by %v", st.StopSignal())
	if ev := uint32(st) >> 16; ev != 0 {
		s += fmt.Sprintf(", event %#x", ev)
		if ev == unix.PTRACE_EVENT_STOP {
			s += " (PTRACE_EVENT_STOP: group-stop or interrupt)"
		}
	}
	return s
}

func filepathBase(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// firstInsnLen decodes the instruction at link-time address v of path.
func firstInsnLen(t testing.TB, path string, v uint64) uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && v >= p.Vaddr && v < p.Vaddr+p.Filesz {
			code := make([]byte, 16)
			p.ReadAt(code, int64(v-p.Vaddr))
			inst, err := x86asm.Decode(code, 64)
			if err != nil {
				t.Fatal(err)
			}
			return uint64(inst.Len)
		}
	}
	t.Fatalf("%#x not in %s", v, path)
	return 0
}

// entryAndFlag returns the link-time entry point and address of victim.c's flag.
func entryAndFlag(t testing.TB, path string) (uint64, uint64) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == "flag" {
			return f.Entry, s.Value
		}
	}
	t.Fatalf("%s: no symbol flag", path)
	return 0, 0
}

// loadBias is where path is loaded in pid minus its link-time address (0 unless PIE).
func loadBias(t testing.TB, pid int, path string) uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Type == elf.ET_EXEC {
		return 0
	}
	m, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	sc := bufio.NewScanner(m)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 6 && fs[5] == path && fs[2] == "00000000" {
			lo, _, _ := strings.Cut(fs[0], "-")
			v, err := strconv.ParseUint(lo, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v // a PIE's first PT_LOAD is at link-time address 0
		}
	}
	t.Fatalf("pid %d has no mapping of %s", pid, path)
	return 0
}
