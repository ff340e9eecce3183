package builder

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/syscare/syscare/rpmbuild/capture"
)

// Event is one progress event of a build, for a front end to show (a live line on a
// terminal, JSON lines for tools). The builder sends them from one goroutine at a time.
type Event struct {
	// Type is "start", "progress", "done", "failed" or "skipped".
	Type string `json:"event"`
	Step string `json:"step"`
	// Detail is what the step did ("2 of 6 objects rebuilt"), on "done".
	Detail string `json:"detail,omitempty"`
	// Objects is how many translation units the captured compiler has compiled so far
	// in this step (the original and the patched build), on "progress".
	Objects int `json:"objects,omitempty"`
	// Seconds since the step started.
	Seconds float64 `json:"seconds"`
}

// progressInterval is how often a running step reports.
const progressInterval = 250 * time.Millisecond

func (b *build) event(e Event) {
	if b.opts.Events != nil {
		b.opts.Events(e)
	}
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
	t := time.NewTicker(progressInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			b.event(Event{Type: "progress", Step: name, Objects: b.compiled.compiles(log) - base, Seconds: time.Since(start).Seconds()})
		}
	}
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
