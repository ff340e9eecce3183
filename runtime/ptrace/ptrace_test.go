package ptrace

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/proc"
)

func TestAttachSingleThread(t *testing.T) {
	v := startVictim(t, "sleep", "1")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Threads(); len(got) != 1 || got[0] != v.pid {
		t.Fatalf("Threads() = %v, want [%d]", got, v.pid)
	}
	allStopped(t, p)
	maps, err := proc.Maps(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.Regs(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	if !inExecutable(maps, r.Rip) {
		t.Errorf("rip %#x is not in an executable mapping", r.Rip)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := p.Detach(); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if _, err := p.Regs(v.pid); !errors.Is(err, ErrDetached) {
		t.Errorf("Regs after Detach: %v, want ErrDetached", err)
	}
	notTraced(t, v.pid)
	v.keepsRunning(3)
}

func TestAttachEightThreads(t *testing.T) {
	for _, mode := range []string{"spin", "sleep"} {
		t.Run(mode, func(t *testing.T) {
			v := startVictim(t, mode, "8")
			tr := NewTracer()
			defer tr.Close()
			for i := 0; i < 20; i++ {
				p, err := tr.Attach(v.pid)
				if err != nil {
					t.Fatal(err)
				}
				if n := len(p.Threads()); n != 8 {
					t.Fatalf("attach %d: %d threads, want 8", i, n)
				}
				if p.Threads()[0] != v.pid {
					t.Errorf("leader not first: %v", p.Threads())
				}
				allStopped(t, p)
				for _, tid := range p.Threads() {
					if _, err := p.Regs(tid); err != nil {
						t.Fatal(err)
					}
				}
				if err := p.Detach(); err != nil {
					t.Fatal(err)
				}
			}
			notTraced(t, v.pid)
			v.keepsRunning(3)
		})
	}
}

// Threads are created every ~20 us and live ~200 us while the attach runs:
// every live thread must end up stopped and listed.
func TestAttachWhileThreadsAreCreated(t *testing.T) {
	v := startVictim(t, "spawn")
	tr := NewTracer()
	defer tr.Close()
	for i := 0; i < 100; i++ {
		p, err := tr.Attach(v.pid)
		if err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
		allStopped(t, p)
		if t.Failed() {
			t.FailNow()
		}
		if err := p.Detach(); err != nil {
			t.Fatal(err)
		}
	}
	notTraced(t, v.pid)
	v.keepsRunning(3)
}

// The leader thread is blocked in read(2): the injected syscall runs, the
// registers come back as the kernel's restart logic would leave them (rip on
// the syscall instruction, rax the call number), and the read restarts and
// still works.
func TestSyscallWhileBlockedInRead(t *testing.T) {
	v := startVictim(t, "read")
	waitInSyscall(t, v.pid, unix.SYS_READ)
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	before, err := p.Regs(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	if before.Orig_rax != unix.SYS_READ {
		t.Fatalf("orig_rax = %d, want read (%d): the victim is not blocked in read", int64(before.Orig_rax), unix.SYS_READ)
	}
	for i := 0; i < 3; i++ {
		got, err := p.Syscall(unix.SYS_GETPID)
		if err != nil {
			t.Fatal(err)
		}
		if int(got) != v.pid {
			t.Fatalf("getpid in victim = %d, want %d", got, v.pid)
		}
	}
	var after unix.PtraceRegs
	if err := tr.Do(func() error { return getRegs(v.pid, &after) }); err != nil {
		t.Fatal(err)
	}
	if want := resumeState(before); after != want || want.Rip != before.Rip-2 || want.Rax != unix.SYS_READ {
		t.Fatalf("registers changed by the injected syscall:\nbefore %+v\nafter  %+v", before, after)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	notTraced(t, v.pid)
	if _, err := v.stdin.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if l := v.expect("got", lineWait); l != "got hello" {
		t.Fatalf("victim answered %q", l)
	}
}

// A thread in nanosleep: the injected syscall and the detach leave the sleep
// to restart (through restart_syscall) and the loop ticking.
func TestSyscallWhileSleeping(t *testing.T) {
	v := startVictim(t, "nap")
	time.Sleep(20 * time.Millisecond)
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := p.Regs(v.pid)
	if r.Orig_rax != unix.SYS_CLOCK_NANOSLEEP && r.Orig_rax != unix.SYS_NANOSLEEP {
		t.Fatalf("orig_rax = %d, victim not sleeping", int64(r.Orig_rax))
	}
	if got, err := p.Syscall(unix.SYS_GETTID); err != nil || int(got) != v.pid {
		t.Fatalf("gettid = %d, %v", got, err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	v.keepsRunning(2)
}

func TestSyscallMmapWriteRead(t *testing.T) {
	v := startVictim(t, "sleep", "8")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	const size = 3 * 4096
	addr, err := p.Syscall(unix.SYS_MMAP, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := proc.Maps(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range maps {
		if m.Start <= addr && addr+size <= m.End && m.Perms == "rw-p" {
			found = true
		}
	}
	if !found {
		t.Fatalf("no rw-p mapping at %#x after injected mmap", addr)
	}

	data := bytes.Repeat([]byte("0123456789abcdef"), 600) // crosses pages
	if err := p.WriteMem(addr, data); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := p.ReadMem(addr, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs from what was written")
	}

	// Several writes, adjacent and apart, then make the pages r-x and write
	// again: /proc/PID/mem forces writes into read-only text.
	ws := []Write{{addr, []byte("AAAA")}, {addr + 4, []byte("BBBB")}, {addr + 8000, []byte("CC")}, {addr + 100, nil}}
	if err := p.WriteMemv(ws); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Syscall(unix.SYS_MPROTECT, addr, size, unix.PROT_READ|unix.PROT_EXEC); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteMemv([]Write{{addr + 8002, []byte("DD")}, {addr + 8, []byte("EE")}, {addr + 10, []byte("FF")}}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 12)
	if err := p.ReadMem(addr, b); err != nil {
		t.Fatal(err)
	}
	if string(b) != "AAAABBBBEEFF" {
		t.Fatalf("read %q", b)
	}
	if err := p.ReadMem(addr+8000, b[:4]); err != nil || string(b[:4]) != "CCDD" {
		t.Fatalf("read %q, %v", b[:4], err)
	}
	// PROT_NONE: process_vm_readv cannot read it, the /proc/PID/mem fallback can.
	if _, err := p.Syscall(unix.SYS_MPROTECT, addr, size, unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	if err := p.ReadMem(addr, b[:4]); err != nil || string(b[:4]) != "AAAA" {
		t.Fatalf("read of PROT_NONE memory: %q, %v", b[:4], err)
	}

	if _, err := p.Syscall(unix.SYS_MUNMAP, addr, size); err != nil {
		t.Fatal(err)
	}
	if err := p.ReadMem(addr, b[:4]); err == nil {
		t.Error("read of unmapped memory succeeded")
	}
	// A failing syscall comes back as its errno.
	if _, err := p.Syscall(unix.SYS_MUNMAP, 1, 4096); !errors.Is(err, unix.EINVAL) {
		t.Errorf("munmap(1): %v, want EINVAL", err)
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	v.keepsRunning(3)
}

// Every thread can run an injected syscall, and each gets its own tid back.
func TestSyscallOnEveryThread(t *testing.T) {
	v := startVictim(t, "spin", "8")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range p.Threads() {
		got, err := p.SyscallOn(tid, unix.SYS_GETTID)
		if err != nil || int(got) != tid {
			t.Fatalf("gettid in %d = %d, %v", tid, got, err)
		}
	}
	if err := p.Detach(); err != nil {
		t.Fatal(err)
	}
	v.keepsRunning(3)
}

func TestKilledWhileAttached(t *testing.T) {
	v := startVictim(t, "sleep", "8")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(v.pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	within(t, 10*time.Second, "syscall in a killed process", func() {
		_, err := p.Syscall(unix.SYS_GETPID)
		if !errors.Is(err, ErrExited) {
			t.Errorf("Syscall after SIGKILL: %v, want ErrExited", err)
		}
		if err := p.WriteMem(0x1000, []byte{1}); !errors.Is(err, ErrExited) {
			t.Errorf("WriteMem after SIGKILL: %v, want ErrExited", err)
		}
		if err := p.Detach(); err != nil {
			t.Errorf("Detach after SIGKILL: %v", err)
		}
	})
	within(t, 10*time.Second, "attach to a dead process", func() {
		if _, err := tr.Attach(v.pid); err == nil {
			t.Error("attach to a dead process succeeded")
		}
	})
}

// SIGKILL lands at a random moment of a stream of attaches and syscalls.
func TestKilledDuringOperations(t *testing.T) {
	for i := 0; i < 5; i++ {
		v := startVictim(t, "spawn")
		tr := NewTracer()
		go func() {
			time.Sleep(time.Duration(2+3*i) * time.Millisecond)
			unix.Kill(v.pid, unix.SIGKILL)
		}()
		within(t, 20*time.Second, "operations on a process being killed", func() {
			for {
				p, err := tr.Attach(v.pid)
				if err != nil {
					if !errors.Is(err, ErrExited) {
						t.Errorf("attach: %v, want ErrExited", err)
					}
					return
				}
				_, err = p.Syscall(unix.SYS_GETPID)
				if derr := p.Detach(); derr != nil {
					t.Errorf("detach: %v", derr)
				}
				if err != nil {
					if !errors.Is(err, ErrExited) {
						t.Errorf("syscall: %v, want ErrExited", err)
					}
					return
				}
			}
		})
		tr.Close()
	}
}

func TestZombieLeader(t *testing.T) {
	v := startVictim(t, "zleader", "8")
	// The leader's pthread_exit runs after the victim's ready line: on a loaded machine
	// it can take far longer than a fixed sleep, so wait for the state, bounded.
	var st byte
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if st, err = proc.ThreadState(v.pid, v.pid); err == nil && st == 'Z' {
			break
		}
	}
	if err != nil || st != 'Z' {
		t.Fatalf("leader state %c, %v; want a zombie", st, err)
	}
	tr := NewTracer()
	defer tr.Close()
	for i := 0; i < 10; i++ {
		p, err := tr.Attach(v.pid)
		if err != nil {
			t.Fatal(err)
		}
		tids := p.Threads()
		if len(tids) != 7 {
			t.Fatalf("%d threads, want 7 (the zombie leader left out)", len(tids))
		}
		if got, err := p.Syscall(unix.SYS_GETTID); err != nil || !slices.Contains(tids, int(got)) || int(got) == v.pid {
			t.Fatalf("gettid = %d, %v; want one of %v", got, err, tids)
		}
		if err := p.Detach(); err != nil {
			t.Fatal(err)
		}
	}
	notTraced(t, v.pid)
	v.keepsRunning(3)
	// Killing it while attached: the zombie leader is reported only after the
	// other threads are reaped, which must not hang.
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	unix.Kill(v.pid, unix.SIGKILL)
	within(t, 10*time.Second, "syscall in a killed process with a zombie leader", func() {
		if _, err := p.Syscall(unix.SYS_GETPID); !errors.Is(err, ErrExited) {
			t.Errorf("Syscall: %v, want ErrExited", err)
		}
		p.Detach()
	})
}

// A non-leader thread re-executes the program every few milliseconds; attach
// must either succeed or report ErrExited, never hang or leave it stopped.
func TestExecDuringAttach(t *testing.T) {
	v := startVictim(t, "exec", "1")
	first := v.expect("gen", lineWait)
	tr := NewTracer()
	defer tr.Close()
	deadline := time.Now().Add(300 * time.Millisecond)
	var ok, exited int
	within(t, 30*time.Second, "attach loop against execve", func() {
		for time.Now().Before(deadline) {
			p, err := tr.Attach(v.pid)
			if err != nil {
				if !errors.Is(err, ErrExited) {
					t.Errorf("attach: %v, want nil or ErrExited", err)
					return
				}
				exited++
				continue
			}
			ok++
			if _, err := p.Syscall(unix.SYS_GETPID); err != nil && !errors.Is(err, ErrExited) {
				t.Errorf("syscall: %v", err)
			}
			if err := p.Detach(); err != nil {
				t.Errorf("detach: %v", err)
			}
		}
	})
	t.Logf("attached %d times, %d attaches met an execve", ok, exited)
	v.drain()
	last := v.expect("gen", lineWait)
	a, _ := strconv.Atoi(strings.Fields(first)[1])
	b, _ := strconv.Atoi(strings.Fields(last)[1])
	if b <= a {
		t.Fatalf("no exec after the attaches (gen %d then %d)", a, b)
	}
	v.expect("gen", lineWait)
	notTraced(t, v.pid)
}

// A 10 kHz SIGALRM timer: signals arrive during attaches and injected
// syscalls, and must keep reaching the process.
func TestSignalsDuringAttach(t *testing.T) {
	v := startVictim(t, "alarm", "4")
	tr := NewTracer()
	defer tr.Close()
	for i := 0; i < 50; i++ {
		p, err := tr.Attach(v.pid)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 5; j++ {
			if got, err := p.Syscall(unix.SYS_GETPID); err != nil || int(got) != v.pid {
				t.Fatalf("getpid = %d, %v", got, err)
			}
		}
		if err := p.Detach(); err != nil {
			t.Fatal(err)
		}
	}
	notTraced(t, v.pid)
	v.drain()
	a, _ := strconv.Atoi(strings.Fields(v.expect("tick", lineWait))[1])
	time.Sleep(50 * time.Millisecond)
	v.drain()
	b, _ := strconv.Atoi(strings.Fields(v.expect("tick", lineWait))[1])
	if b <= a {
		t.Fatalf("SIGALRM count stuck at %d after the attaches", a)
	}
}

// A whole freeze inside Do makes no handoff and no deadlock: Process methods
// called on the tracer thread run directly.
func TestDoRunsFreezeOnTracerThread(t *testing.T) {
	v := startVictim(t, "sleep", "8")
	tr := NewTracer()
	defer tr.Close()
	err := tr.Do(func() error {
		if unix.Gettid() != tr.tid {
			t.Error("Do does not run on the tracer thread")
		}
		p, err := tr.Attach(v.pid)
		if err != nil {
			return err
		}
		defer p.Detach()
		addr, err := p.Syscall(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
		if err != nil {
			return err
		}
		if err := p.WriteMem(addr, []byte("x")); err != nil {
			return err
		}
		_, err = p.Syscall(unix.SYS_MUNMAP, addr, 4096)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	notTraced(t, v.pid)
	v.keepsRunning(2)
}

func TestParallelTracers(t *testing.T) {
	const n = 4
	var wg sync.WaitGroup
	vs := make([]*victim, n)
	for i := range vs {
		vs[i] = startVictim(t, "sleep", "4")
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(v *victim) {
			defer wg.Done()
			tr := NewTracer()
			defer tr.Close()
			for j := 0; j < 30; j++ {
				p, err := tr.Attach(v.pid)
				if err != nil {
					t.Error(err)
					return
				}
				if got, err := p.Syscall(unix.SYS_GETPID); err != nil || int(got) != v.pid {
					t.Errorf("getpid = %d, %v", got, err)
				}
				if err := p.Detach(); err != nil {
					t.Error(err)
				}
			}
		}(vs[i])
	}
	wg.Wait()
	for _, v := range vs {
		notTraced(t, v.pid)
		v.keepsRunning(1)
	}
}

// Close detaches what is still attached; the process runs on.
func TestCloseDetaches(t *testing.T) {
	v := startVictim(t, "sleep", "4")
	tr := NewTracer()
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	tr.Close()
	notTraced(t, v.pid)
	v.keepsRunning(2)
	if _, err := tr.Attach(v.pid); !errors.Is(err, ErrClosed) {
		t.Errorf("Attach after Close: %v, want ErrClosed", err)
	}
	if err := p.Detach(); err != nil && !errors.Is(err, ErrClosed) {
		t.Errorf("Detach after Close: %v", err)
	}
}

func TestAttachErrors(t *testing.T) {
	tr := NewTracer()
	defer tr.Close()
	if _, err := tr.Attach(1 << 30); !errors.Is(err, ErrExited) {
		t.Errorf("attach to a missing pid: %v, want ErrExited", err)
	}
	v := startVictim(t, "sleep", "2")
	p, err := tr.Attach(v.pid)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Detach()
	if _, err := tr.Attach(v.pid); err == nil {
		t.Error("second attach by the same tracer succeeded")
	}
	other := NewTracer()
	defer other.Close()
	if _, err := other.Attach(v.pid); !errors.Is(err, unix.EPERM) {
		t.Errorf("attach of a traced process: %v, want EPERM", err)
	}
	if _, err := p.Syscall(1, 2, 3, 4, 5, 6, 7, 8); err == nil {
		t.Error("syscall with 7 arguments accepted")
	}
	if _, err := p.SyscallOn(12345678, unix.SYS_GETPID); err == nil {
		t.Error("syscall on a foreign tid accepted")
	}
}

// BenchmarkFreeze8 is a whole freeze of an 8-thread process on the tracer
// thread: attach every thread, read every thread's registers, detach.
func BenchmarkFreeze8(b *testing.B) {
	v := startVictim(b, "sleep", "8")
	tr := NewTracer()
	defer tr.Close()
	for b.Loop() {
		err := tr.Do(func() error {
			p, err := tr.Attach(v.pid)
			if err != nil {
				return err
			}
			for _, tid := range p.Threads() {
				if _, err := p.Regs(tid); err != nil {
					return err
				}
			}
			return p.Detach()
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFreeze8Busy is the same freeze of 8 threads that never sleep.
func BenchmarkFreeze8Busy(b *testing.B) {
	v := startVictim(b, "spin", "8")
	tr := NewTracer()
	defer tr.Close()
	for b.Loop() {
		err := tr.Do(func() error {
			p, err := tr.Attach(v.pid)
			if err != nil {
				return err
			}
			return p.Detach()
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFreeze8Patch is the shape of a patch: attach 8 threads, mmap,
// write code and a jump, munmap, detach.
func BenchmarkFreeze8Patch(b *testing.B) {
	v := startVictim(b, "sleep", "8")
	tr := NewTracer()
	defer tr.Close()
	code := bytes.Repeat([]byte{0x90}, 4096)
	for b.Loop() {
		err := tr.Do(func() error {
			p, err := tr.Attach(v.pid)
			if err != nil {
				return err
			}
			defer p.Detach()
			addr, err := p.Syscall(unix.SYS_MMAP, 0, 8192, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
			if err != nil {
				return err
			}
			if err := p.WriteMemv([]Write{{addr, code}, {addr + 4096, []byte{0xe9, 1, 2, 3, 4}}}); err != nil {
				return err
			}
			_, err = p.Syscall(unix.SYS_MUNMAP, addr, 8192)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSyscall is one injected syscall (getpid) in a stopped thread.
func BenchmarkSyscall(b *testing.B) {
	v := startVictim(b, "sleep", "8")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Detach()
	err = tr.Do(func() error {
		for b.Loop() {
			if _, err := p.Syscall(unix.SYS_GETPID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSyscallHandoff is the same call made from outside the tracer
// thread: the difference is the cost of one goroutine handoff.
func BenchmarkSyscallHandoff(b *testing.B) {
	v := startVictim(b, "sleep", "2")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Detach()
	for b.Loop() {
		if _, err := p.Syscall(unix.SYS_GETPID); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadMem(b *testing.B) {
	v := startVictim(b, "sleep", "2")
	tr := NewTracer()
	defer tr.Close()
	p, err := tr.Attach(v.pid)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Detach()
	r, _ := p.Regs(v.pid)
	buf := make([]byte, 64)
	for b.Loop() {
		if err := p.ReadMem(r.Rsp, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// The tracer is killed (SIGKILL) at random instants while it attaches,
// injects code and detaches, in a process with eight threads and an interval
// timer: every time, the process must be left untraced, running, with its
// signals working. This is the ptrace half of the upatch kill campaign.
func TestTracerKilledWhileInjecting(t *testing.T) {
	v := startVictim(t, "alarm", "8")
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for i := 0; i < 25; i++ {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), "SYSCARE_PTRACE_INJECTOR="+strconv.Itoa(v.pid))
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait for the first attach, then kill at a random instant.
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
			if tp, err := proc.TracerPid(v.pid); err == nil && tp != 0 {
				break
			}
		}
		time.Sleep(time.Duration(rng.Int63n(int64(20 * time.Millisecond))))
		c.Process.Kill()
		c.Wait()
		notTraced(t, v.pid)
		if t.Failed() {
			t.FailNow()
		}
		v.drain()
		a, _ := strconv.Atoi(strings.Fields(v.expect("tick", lineWait))[1])
		b, _ := strconv.Atoi(strings.Fields(v.expect("tick", lineWait))[1])
		if b <= a {
			t.Fatalf("kill %d: SIGALRM count stuck at %d", i, a)
		}
	}
}

// waitInSyscall waits (bounded) until thread pid is blocked in system call nr, as
// /proc/PID/syscall shows it: a fixed sleep is too short on a loaded machine.
func waitInSyscall(t *testing.T, pid int, nr int) {
	t.Helper()
	want := strconv.Itoa(nr) + " "
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/syscall")
		if err == nil && strings.HasPrefix(string(b), want) {
			return
		}
	}
	t.Fatalf("pid %d did not block in system call %d within 10s", pid, nr)
}

// NewTracer returns before its thread runs: a request made at once waits for
// the thread and runs there, and a tracer closed before its thread ran ends
// cleanly and refuses requests.
func TestNewTracerReturnsBeforeThreadRuns(t *testing.T) {
	tr := NewTracer()
	var tid int
	if err := tr.Do(func() error { tid = unix.Gettid(); return nil }); err != nil {
		t.Fatal(err)
	}
	if tid != tr.tid || tid == 0 {
		t.Errorf("first request ran on thread %d, tracer thread is %d", tid, tr.tid)
	}
	tr.Close()
	early := NewTracer()
	early.Close()
	if err := early.Do(func() error { return nil }); err != ErrClosed {
		t.Errorf("request after Close: %v, want ErrClosed", err)
	}
}
