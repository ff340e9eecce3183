package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/syscare/syscare/internal/termline"
	"github.com/syscare/syscare/rpmbuild/builder"
)

// liveLine shows the running step on one terminal line, redrawn in place with its
// elapsed time and the objects compiled so far; the step's final line (the builder's
// Progress text) replaces it when the step ends. Piped output gets only the final lines.
type liveLine struct {
	w    io.Writer
	line *termline.Line
}

func (l liveLine) event(e builder.Event) {
	var text string
	switch e.Type {
	case "start":
		text = e.Step + " ..."
	case "progress":
		text = fmt.Sprintf("%s ... %.0fs", e.Step, e.Seconds)
		switch {
		case e.Total > 0:
			text += fmt.Sprintf(", %d of %d objects compiled", e.Objects, e.Total)
		case e.Objects > 0:
			text += fmt.Sprintf(", %d objects compiled", e.Objects)
		}
	default:
		return
	}
	l.line.Show(text)
}

// Write takes the builder's final step lines: the live line is cleared first.
func (l liveLine) Write(p []byte) (n int, err error) {
	l.line.Do(func() { n, err = l.w.Write(p) })
	return n, err
}

// jsonEvents writes each event as one JSON object per line (for tools and front ends).
type jsonEvents struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func newJSONEvents(w io.Writer) *jsonEvents { return &jsonEvents{enc: json.NewEncoder(w)} }

func (j *jsonEvents) event(e builder.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.enc.Encode(e)
}

// result is the last JSON line of a --json build.
type result struct {
	Event  string   `json:"event"`
	OK     bool     `json:"ok"`
	DryRun bool     `json:"dry_run,omitempty"`
	RPMs   []string `json:"rpms,omitempty"`
	SRPMs  []string `json:"srpms,omitempty"`
	Error  string   `json:"error,omitempty"`
	Log    string   `json:"log,omitempty"`
}

func (j *jsonEvents) result(r result) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r.Event = "result"
	r.Error = strings.TrimSpace(r.Error)
	j.enc.Encode(r)
}
