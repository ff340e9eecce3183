package builder

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/syscare/syscare/rpmbuild/capture"
)

// Event is one progress event of a build, for a front end to show (a live line on a
// terminal, JSON lines for tools). The builder sends them one at a time.
type Event struct {
	// Type is "start", "progress", "done", "failed" or "skipped".
	Type string `json:"event"`
	Step string `json:"step"`
	// Detail is what the step did ("2 of 6 objects rebuilt"), on "done".
	Detail string `json:"detail,omitempty"`
	// Objects is how many translation units were compiled so far in this step (the
	// original and the patched build), on "progress".
	Objects int `json:"objects,omitempty"`
	// Total is how many objects the step compiles, where that is known in advance (the
	// patched build's changed units; 0 otherwise: the original build's count is only
	// known once the package's own build has run).
	Total int `json:"total,omitempty"`
	// Seconds since the step started.
	Seconds float64 `json:"seconds"`
}

// progressInterval is how often a running step reports.
const progressInterval = 250 * time.Millisecond

func (b *build) event(e Event) {
	if b.opts.Events != nil {
		b.counted.mu.Lock()
		defer b.counted.mu.Unlock()
		b.opts.Events(e)
	}
}

// objectDone counts one object of a step that knows its total and reports it at once
// (a patched build of a few units ends before the next tick).
func (b *build) objectDone() {
	done := b.counted.done.Add(1)
	b.event(Event{Type: "progress", Step: b.counted.step, Objects: int(done), Total: int(b.counted.total.Load()),
		Seconds: time.Since(b.counted.start).Seconds()})
}

// watchStep sends "progress" events while a step runs, until stop is closed; done is
// closed when the last event was sent, so that no event follows the step's end.
func (b *build) watchStep(name string, start time.Time, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if b.opts.Events == nil {
		return
	}
	log := filepath.Join(b.work, "capture", capture.LogName)
	base := b.compiled.compiles(log)
	// The count is the step's: cleared when it ends, before the next step starts.
	defer b.counted.total.Store(0)
	defer b.counted.done.Store(0)
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			e := Event{Type: "progress", Step: name, Objects: b.compiled.compiles(log) - base, Seconds: time.Since(start).Seconds()}
			if total := int(b.counted.total.Load()); total > 0 {
				e.Objects, e.Total = int(b.counted.done.Load()), total
			}
			b.event(e)
		}
	}
}

// stepCount is the objects done of total of a step that compiles them itself (the
// patched build), read by watchStep; mu makes the events go out one at a time.
type stepCount struct {
	mu          sync.Mutex
	step        string
	start       time.Time
	done, total atomic.Int64
}

// recordCounter counts the compile records of the capture log, reading only what was
// appended since its last call (the wrapper appends whole lines with one write).
type recordCounter struct {
	off int64
	n   int
}

var compileMark = []byte(`"kind":"` + capture.KindCompile + `"`)

func (c *recordCounter) compiles(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return c.n
	}
	defer f.Close()
	if _, err := f.Seek(c.off, io.SeekStart); err != nil {
		return c.n
	}
	data, _ := io.ReadAll(f)
	// Count only whole lines; a partial one is read again next time.
	end := bytes.LastIndexByte(data, '\n') + 1
	c.n += bytes.Count(data[:end], compileMark)
	c.off += int64(end)
	return c.n
}
