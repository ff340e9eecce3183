package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// progressLine shows, on a terminal, how many processes of a batch are done on one line
// redrawn in place ("patch: 12 of 40 processes"), and clears it before anything else is
// written there (warnings) and at the end; the results still go to stdout as lines.
// Where stderr is not a terminal it shows nothing.
type progressLine struct {
	mu    sync.Mutex
	w     io.Writer
	verb  string
	shown bool
}

// newProgressLine returns nil when w is not a terminal.
func newProgressLine(w io.Writer, verb string) *progressLine {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	return &progressLine{w: w, verb: verb}
}

func (p *progressLine) update(done, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\r\033[K%s: %d of %d processes", p.verb, done, total)
	p.shown = true
	if done == total {
		// The batch is over: the results follow on stdout, on the same terminal.
		io.WriteString(p.w, "\r\033[K")
		p.shown = false
	}
}

func (p *progressLine) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		io.WriteString(p.w, "\r\033[K")
		p.shown = false
	}
}

// warn writes a warning where the progress line was, under the lock, so that no
// update of another worker lands between the clearing and the warning.
func (p *progressLine) warn(write func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		io.WriteString(p.w, "\r\033[K")
		p.shown = false
	}
	write()
}
