package upatch

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/ptrace"
)

// Staging: the patch image written into the process before the freeze.

// staged is a patch image written into its region before the process is stopped;
// the region stays rw- (so invisible to readHeaders, which looks at r-x mappings)
// until the commit makes its code r-x. A tool that dies between staging and commit
// leaves the region mapped (never executed, no jump leads to it): memory leaked, the
// process otherwise as it was.
type staged struct {
	base, total, textSize, tableOff uint64
	hdr                             Header         // pending; Seq and the original bytes come in the freeze
	jumps                           []ptrace.Write // then the write that clears the pending mark
}

// stage maps the patch's region near the target, links the patch for it and writes
// it, with only one thread of the process stopped (the region is new memory that no
// code uses, and an IFUNC resolver reads only CPU features), so that none of this
// lengthens the freeze. A failed freeze leaves the region to unstage.
//
// It all runs on the tracer thread (Tracer.Do): called from elsewhere, the stop,
// the injected mmap, the write and the resume would each be a handoff to that
// thread and back, and the stopped thread waits for every one of them.
func (e *Engine) stage(t *ptrace.Tracer, p *prepared) error {
	return t.Do(func() error {
		pr, err := t.AttachThread(p.pid)
		if err != nil {
			return exited(p.pid, fmt.Errorf("stop a thread of pid %d: %w", p.pid, err))
		}
		defer pr.Detach()
		return p.stageIn(pr)
	})
}

// stageIn stages the patch in pr, stopped in part or in whole.
func (p *prepared) stageIn(pr *ptrace.Process) error {
	hdr := Header{UUID: p.uuid, Bias: p.tgt.bias, Target: p.tgt.path, Pending: true}
	for _, f := range p.funcs {
		hdr.Funcs = append(hdr.Funcs, HeaderFunc{Name: f.name, Pos: uint32(f.pos), Old: f.addr})
	}
	// The jump table (one entry per jump, then the one that clears the
	// pending mark) follows the header.
	tableOff := uint64(hdr.encodedSize())
	hdrSize := tableOff + uint64(len(p.funcs)+1)*ptrace.TableEntrySize
	hdrPages := roundUp(hdrSize, pageSize)
	textSize := hdrPages + roundUp(p.plan.TextSize, pageSize)
	total := textSize + roundUp(p.plan.DataSize, pageSize)
	if total > maxRegion {
		return fmt.Errorf("patch needs %d bytes of memory", total)
	}
	base, err := allocNear(pr, p.maps, p.tgt.lo, p.tgt.hi, total)
	if err != nil {
		return err
	}
	undo := func() {
		_, _ = pr.Syscall(unix.SYS_MUNMAP, base, total)
		p.res.dropNewShadow(pr)
	}
	p.res.pr = pr
	img, err := p.plan.Link(base+hdrPages, p.res)
	p.res.pr = nil
	if p.res.usesShadow {
		hdr.Shadow = p.res.shadow
	}
	if err != nil {
		undo()
		return fmt.Errorf("link patch: %w", err)
	}
	if uint64(len(img.Text)) > textSize-hdrPages || (len(img.Data) > 0 && hdrPages+uint64(len(img.Text)) != textSize) ||
		uint64(len(img.Data)) > total-textSize {
		undo()
		return fmt.Errorf("link patch: image larger than planned")
	}
	jumps := make([]ptrace.Write, len(p.funcs))
	for i, f := range img.Funcs {
		old := p.funcs[i]
		if f.OldName != old.name {
			undo()
			return fmt.Errorf("link patch: function order differs (%q vs %q)", f.OldName, old.name)
		}
		hdr.Funcs[i].New, hdr.Funcs[i].NewSize = f.New, f.NewSize
		jumps[i] = ptrace.Write{Addr: old.addr, Data: jumpBytes(old.addr, f.New)}
		hdr.Funcs[i].Orig = make([]byte, len(jumps[i].Data)) // read in the freeze
	}
	hdr.Size, hdr.TextSize = total, textSize
	hb, err := hdr.Encode()
	if err != nil {
		undo()
		return err
	}
	jumps = append(jumps, ptrace.Write{Addr: base + headerStateOff, Data: make([]byte, 4)})
	hb = append(hb, encodeTable(jumps)...)
	writes := []ptrace.Write{{Addr: base, Data: hb}, {Addr: base + hdrPages, Data: img.Text}}
	if len(img.Data) > 0 {
		writes = append(writes, ptrace.Write{Addr: base + textSize, Data: img.Data})
	}
	if err := pr.WriteMemv(writes); err != nil {
		undo()
		return exited(p.pid, fmt.Errorf("write patch: %w", err))
	}
	p.stage = &staged{base: base, total: total, textSize: textSize, tableOff: tableOff, hdr: hdr, jumps: jumps}
	return nil
}

// unstage unmaps a staged region that was never committed, and a shadow-variable
// table mapped for it.
func (e *Engine) unstage(t *ptrace.Tracer, p *prepared) {
	if p.stage == nil && !p.res.shadowNew {
		return
	}
	_ = t.Do(func() error { // one handoff, as in stage
		pr, err := t.AttachThread(p.pid)
		if err != nil {
			return nil // exited: nothing left to clean
		}
		defer pr.Detach()
		if p.stage != nil {
			if _, err := pr.Syscall(unix.SYS_MUNMAP, p.stage.base, p.stage.total); err == nil {
				p.stage = nil
			}
		}
		p.res.dropNewShadow(pr)
		return nil
	})
}
