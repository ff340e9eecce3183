// Package termline draws one status line on a terminal, redrawn in place, and clears
// it before anything else is written there: the live progress of syscare-build,
// upatch-manage and the syscare CLI. It sits outside runtime/, helper/ and rpmbuild/
// because all three import it: runtime/ imports neither of the others, and the syscare
// CLI links nothing of runtime/.
package termline

import (
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// clearLine returns the cursor to the line's start and erases the line.
const clearLine = "\r\033[K"

// IsTerminal reports whether w is a terminal, where a line can be redrawn.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Line is the status line on w. Its methods may be called from several goroutines.
type Line struct {
	mu    sync.Mutex
	w     io.Writer
	shown bool
}

// New returns the status line on w, which the caller knows to be a terminal.
func New(w io.Writer) *Line { return &Line{w: w} }

// Show replaces the line's text.
func (l *Line) Show(text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	io.WriteString(l.w, clearLine+text)
	l.shown = true
}

// Clear erases the line, if one is shown.
func (l *Line) Clear() { l.Do(func() {}) }

// Do erases the line and runs write, which writes other output to the terminal, under
// the line's lock, so that no Show of another goroutine lands between the two.
func (l *Line) Do(write func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shown {
		io.WriteString(l.w, clearLine)
		l.shown = false
	}
	write()
}
