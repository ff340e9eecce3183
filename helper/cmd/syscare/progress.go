package main

import (
	"fmt"
	"io"
	"time"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/internal/termline"
)

// changesProcesses lists the commands during which the helper may put a user patch into
// or out of many processes and send Progress signals.
var changesProcesses = map[string]bool{"apply": true, "active": true, "deactive": true, "remove": true,
	"upgrade": true, "restore": true}

// showProgress prints the helper's Progress signals on w while a command runs: on a
// terminal one line redrawn in place and cleared at the end, otherwise (--progress) a
// plain line per signal. It returns the function that ends it, to be called once the
// command's reply is in; nothing is shown when the subscription fails (progress is a
// nicety, the command runs anyway).
func showProgress(c *syscarebus.Client, w io.Writer, live bool) func() {
	events, stop, err := c.WatchProgress()
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	finish := make(chan struct{})
	go func() {
		defer close(done)
		var line *termline.Line
		if live {
			line = termline.New(w)
			defer line.Clear()
		}
		show := func(p syscarebus.Progress) {
			text := fmt.Sprintf("%s %s: %d of %d processes", p.Operation, p.Patch, p.Done, p.Total)
			if line != nil {
				line.Show(text)
			} else {
				fmt.Fprintln(w, text)
			}
		}
		for {
			select {
			case p := <-events:
				show(p)
			case <-finish:
				// The helper sends its signals before its reply, but they reach this
				// goroutine through another queue: take what is still coming.
				for {
					select {
					case p := <-events:
						show(p)
					case <-time.After(50 * time.Millisecond):
						return
					}
				}
			}
		}
	}()
	return func() {
		close(finish)
		<-done
		stop()
	}
}
