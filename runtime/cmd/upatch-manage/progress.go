package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/syscare/syscare/internal/termline"
	"github.com/syscare/syscare/runtime/upatch"
)

// progressLine shows, on a terminal, how many processes of a batch are done on one line
// redrawn in place ("patch: 12 of 40 processes"), and clears it before anything else is
// written there (warnings) and at the end; the results still go to stdout as lines.
// Where stderr is not a terminal it shows nothing.
type progressLine struct {
	line *termline.Line
	verb string
}

// newProgressLine returns nil when w is not a terminal.
func newProgressLine(w io.Writer, verb string) *progressLine {
	if !termline.IsTerminal(w) {
		return nil
	}
	return &progressLine{line: termline.New(w), verb: verb}
}

func (p *progressLine) update(done, total int, _ upatch.Result) {
	p.line.Show(fmt.Sprintf("%s: %d of %d processes", p.verb, done, total))
	if done == total {
		// The batch is over: the results follow on stdout, on the same terminal.
		p.line.Clear()
	}
}

// progressEvent is one line of --json progress on stderr: a process of the run is
// done. Done and Total count over the whole run: a rescan of --all that finds new
// processes raises Total, so Done never goes back.
type progressEvent struct {
	Event    string `json:"event"` // always "process"
	Op       string `json:"op"`    // patch or unpatch
	Pid      int    `json:"pid"`
	OK       bool   `json:"ok"`
	Error    string `json:"error,omitempty"`
	FreezeUS int64  `json:"freeze_us"`
	Done     int    `json:"done"`
	Total    int    `json:"total"`
}

// jsonProgress writes a progressEvent per process, one JSON object per line, for tools
// that drive upatch-manage and show their own progress. It goes to stderr so that stdout
// keeps the results (one JSON document) as before; the tool's warnings and errors stay
// plain text there, and an event line is the only kind that begins with "{".
type jsonProgress struct {
	mu   sync.Mutex
	enc  *json.Encoder
	op   string
	base int // processes of the batches already over
}

func newJSONProgress(w io.Writer, op string) *jsonProgress {
	return &jsonProgress{enc: json.NewEncoder(w), op: op}
}

func (j *jsonProgress) update(done, total int, r upatch.Result) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ev := progressEvent{Event: "process", Op: j.op, Pid: r.Pid, OK: r.Err == nil,
		FreezeUS: r.Stats.Freeze.Microseconds(), Done: j.base + done, Total: j.base + total}
	if r.Err != nil {
		ev.Error = withPid(r.Pid, r.Err).Error()
	}
	_ = j.enc.Encode(ev) // stderr unwritable: nothing better to do than go on patching
	if done == total {
		j.base += total
	}
}
