package watch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Layout of one ring-buffer record written by the probe program.
const (
	recPidTgid = 0  // u64: bpf_get_current_pid_tgid (tgid in the high half)
	recCookie  = 8  // u64: attach cookie = target id
	recSigret  = 16 // s64: return of bpf_send_signal
	recKtime   = 24 // u64: bpf_ktime_get_ns (CLOCK_MONOTONIC) at the probe hit
	recSize    = 32
)

// defaultRingSize holds about 6500 records (with their 8-byte headers); a burst larger than
// that while the caller is not reading is counted as missed and those processes run
// unstopped (see the package doc).
const defaultRingSize = 256 << 10

// bpfBackend catches processes with one uprobe per watched file, all running the same program;
// the attach cookie tells the reader which file a record is about.
type bpfBackend struct {
	ring   *ebpf.Map
	missed *ebpf.Map
	prog   *ebpf.Program
	reader *ringbuf.Reader
	links  map[uint64]link.Link // by target id
	self   link.Link            // the self-test probe, kept until close (see selfTest)
}

// newBPFBackend loads the program; ringSize is the ring buffer's size in bytes (a power of
// two, at least a page).
func newBPFBackend(ringSize uint32) (_ *bpfBackend, err error) {
	b := &bpfBackend{links: make(map[uint64]link.Link)}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	b.ring, err = ebpf.NewMap(&ebpf.MapSpec{Name: "syscare_watch", Type: ebpf.RingBuf, MaxEntries: ringSize})
	if err != nil {
		return nil, fmt.Errorf("ring buffer map: %w", err)
	}
	b.missed, err = ebpf.NewMap(&ebpf.MapSpec{Name: "syscare_missed", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("counter map: %w", err)
	}
	b.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "syscare_stop",
		Type:         ebpf.Kprobe,
		Instructions: stopProgram(b.ring.FD(), b.missed.FD()),
		License:      "GPL", // bpf_send_signal is GPL-only
	})
	if err != nil {
		return nil, fmt.Errorf("load probe program: %w", err)
	}
	b.reader, err = ringbuf.NewReader(b.ring)
	if err != nil {
		return nil, fmt.Errorf("ring buffer reader: %w", err)
	}
	if err := b.selfTest(); err != nil {
		return nil, err
	}
	return b, nil
}

// stopProgram is the uprobe program: reserve a record, stop the process, fill the record and
// submit it. It reserves first so that it never stops a process it cannot report.
func stopProgram(ringFD, missedFD int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx, for bpf_get_attach_cookie

		asm.LoadMapPtr(asm.R1, ringFD),
		asm.Mov.Imm(asm.R2, recSize),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "missed"),
		asm.Mov.Reg(asm.R7, asm.R0),

		asm.FnGetCurrentPidTgid.Call(),
		asm.StoreMem(asm.R7, recPidTgid, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetAttachCookie.Call(),
		asm.StoreMem(asm.R7, recCookie, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R1, int32(unix.SIGSTOP)),
		asm.FnSendSignal.Call(),
		asm.StoreMem(asm.R7, recSigret, asm.R0, asm.DWord),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R7, recKtime, asm.R0, asm.DWord),

		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufSubmit.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),

		// Count the process we let run unstopped.
		asm.Mov.Imm(asm.R1, 0).WithSymbol("missed"),
		asm.StoreMem(asm.RFP, -4, asm.R1, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, missedFD),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}

// selfTest attaches the program to this process's own entry point, restricted to this pid
// (which never runs its entry again), so that a kernel without uprobe support is found by New
// rather than by the first Add. The probe stays until close because detaching costs an RCU
// grace period that New need not wait for.
func (b *bpfBackend) selfTest() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("uprobe self-test: %w", err)
	}
	pp, err := findProbePoint(exe)
	if err != nil {
		return fmt.Errorf("uprobe self-test: %w", err)
	}
	b.self, err = b.attachAt(exe, pp.offset, 0, os.Getpid())
	if err != nil {
		return fmt.Errorf("uprobe self-test: %w", err)
	}
	return nil
}

func (b *bpfBackend) attachAt(path string, offset, cookie uint64, pid int) (link.Link, error) {
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, err
	}
	if offset == 0 {
		// cilium/ebpf treats Address 0 as "not given"; no real entry point or initializer
		// sits at file offset 0 (that is the ELF header).
		return nil, fmt.Errorf("probe at file offset 0: %w", errors.ErrUnsupported)
	}
	return ex.Uprobe("", b.prog, &link.UprobeOptions{Address: offset, Cookie: cookie, PID: pid})
}

func (b *bpfBackend) attach(t *target) error {
	l, err := b.attachAt(t.probeFile(), t.probe.offset, t.id, 0)
	if err != nil {
		return fmt.Errorf("uprobe at %s+%#x: %w", t.probeFile(), t.probe.offset, err)
	}
	b.links[t.id] = l
	return nil
}

func (b *bpfBackend) detach(t *target) error {
	l, ok := b.links[t.id]
	if !ok {
		return nil
	}
	delete(b.links, t.id)
	return l.Close()
}

// run reads records until stop has flushed the ring or the reader is closed.
func (b *bpfBackend) run(w *Watcher) {
	var rec ringbuf.Record
	for {
		err := b.reader.ReadInto(&rec)
		if err != nil {
			// ErrFlushed: stop drained the ring; anything else means the reader is gone.
			return
		}
		if len(rec.RawSample) < recSize {
			continue
		}
		raw := rec.RawSample
		pid := int(binary.LittleEndian.Uint64(raw[recPidTgid:]) >> 32)
		id := binary.LittleEndian.Uint64(raw[recCookie:])
		sigret := int64(binary.LittleEndian.Uint64(raw[recSigret:]))
		hit := int64(binary.LittleEndian.Uint64(raw[recKtime:]))
		w.deliver(pid, id, sigret == 0, hit)
	}
}

// stop detaches every probe so that no new record can appear, then makes run return after it
// has handled the records already in the ring (their processes are stopped and must be
// resumed).
func (b *bpfBackend) stop() error {
	err := b.closeLinks()
	if b.reader != nil {
		err = errors.Join(err, b.reader.Flush())
	}
	return err
}

// closeLinks detaches all probes. Each detach waits for RCU grace periods in the kernel
// (about 100 ms each measured on 6.18, and serialized there: closing in parallel gained
// nothing), so Remove and Close are slow compared with Add.
func (b *bpfBackend) closeLinks() error {
	var errs []error
	for id, l := range b.links {
		errs = append(errs, l.Close())
		delete(b.links, id)
	}
	if b.self != nil {
		errs = append(errs, b.self.Close())
		b.self = nil
	}
	return errors.Join(errs...)
}

func (b *bpfBackend) missedCount() uint64 {
	var n uint64
	if b.missed == nil || b.missed.Lookup(uint32(0), &n) != nil {
		return 0
	}
	return n
}

// close releases the kernel objects; run must have returned.
func (b *bpfBackend) close() error {
	errs := []error{b.closeLinks()}
	if b.reader != nil {
		errs = append(errs, b.reader.Close())
	}
	if b.prog != nil {
		errs = append(errs, b.prog.Close())
	}
	if b.missed != nil {
		errs = append(errs, b.missed.Close())
	}
	if b.ring != nil {
		errs = append(errs, b.ring.Close())
	}
	return errors.Join(errs...)
}
