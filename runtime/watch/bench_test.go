package watch

import (
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkNewProcess measures, per process of a small C program, the time from just before
// fork+exec (exec.Cmd.Start) to the event, and to the process's exit after an immediate
// Resume, for each mode; and the start-to-exit time of a program that does not match, with no
// watcher and with each kind of watcher active (the overhead on unrelated processes).
// Figures are medians over procsPerOp processes per iteration.
func BenchmarkNewProcess(b *testing.B) {
	needRoot(b)
	const procsPerOp = 30
	run := func(b *testing.B, w *Watcher, path string) {
		var toEvent, toExit, noticedToEvent []time.Duration
		for range b.N {
			for range procsPerOp {
				t0 := time.Now()
				p := start(b, path, "hold")
				if w != nil {
					ev := nextEvent(b, w)
					toEvent = append(toEvent, time.Since(t0))
					noticedToEvent = append(noticedToEvent, time.Duration(monotonicNow()-ev.noticed))
					if err := w.Resume(ev.Pid); err != nil {
						b.Fatal(err)
					}
				}
				p.release()
				if err := p.cmd.Wait(); err != nil {
					b.Fatal(err)
				}
				toExit = append(toExit, time.Since(t0))
			}
		}
		if toEvent != nil {
			b.ReportMetric(median(toEvent), "µs-exec-to-event")
			b.ReportMetric(median(noticedToEvent), "µs-kernel-to-event")
		}
		b.ReportMetric(median(toExit), "µs-exec-to-exit")
	}
	watcher := func(b *testing.B, mode string) *Watcher {
		w, err := newWatcher(options{mode: mode})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { w.Close() })
		if err := w.Add(fix.pie); err != nil {
			b.Fatal(err)
		}
		return w
	}
	b.Run("baseline-unwatched", func(b *testing.B) { run(b, nil, fix.pie) })
	b.Run("ebpf-watched", func(b *testing.B) { run(b, watcher(b, ModeEBPF), fix.pie) })
	b.Run("proc-connector-watched", func(b *testing.B) { run(b, watcher(b, ModeProcConnector), fix.pie) })
	b.Run("ebpf-other-program", func(b *testing.B) {
		watcher(b, ModeEBPF)
		run(b, nil, fix.noPIE)
	})
	b.Run("proc-connector-other-program", func(b *testing.B) {
		watcher(b, ModeProcConnector)
		run(b, nil, fix.noPIE)
	})
	b.Run("no-watcher-other-program", func(b *testing.B) { run(b, nil, fix.noPIE) })
}

// BenchmarkAddRemove measures attaching and detaching one probe (Remove waits for RCU grace
// periods in the kernel).
func BenchmarkAddRemove(b *testing.B) {
	needRoot(b)
	w, err := newWatcher(options{mode: ModeEBPF})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	var add, remove []time.Duration
	for range b.N {
		for range 5 {
			t0 := time.Now()
			if err := w.Add(fix.pie); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := w.Remove(fix.pie); err != nil {
				b.Fatal(err)
			}
			add, remove = append(add, t1.Sub(t0)), append(remove, time.Since(t1))
		}
	}
	b.ReportMetric(median(add), "µs-add")
	b.ReportMetric(median(remove), "µs-remove")
}

func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func median(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2].Nanoseconds()) / 1e3
}
