package watch

import (
	"testing"
	"time"
)

// TestExecutableStopsAtEntry covers the three kinds of executable: each process is stopped
// before main printed anything, reported once with the path given to Add, and completes
// normally after Resume.
func TestExecutableStopsAtEntry(t *testing.T) {
	needRoot(t)
	kinds := map[string]string{"pie": fix.pie, "no-pie": fix.noPIE, "static": fix.static}
	for name, path := range kinds {
		t.Run(name, func(t *testing.T) {
			if path == "" {
				t.Skip("no static libc installed (libc6-dev provides libc.a)")
			}
			w := newEBPF(t)
			if err := w.Add(path); err != nil {
				t.Fatal(err)
			}
			p := start(t, path)
			ev := nextEvent(t, w)
			if ev.Pid != p.cmd.Process.Pid || ev.Path != path {
				t.Fatalf("event %+v, want pid %d path %s", ev, p.cmd.Process.Pid, path)
			}
			assertStopped(t, ev.Pid)
			if out := p.output(t); out != "" {
				t.Fatalf("process printed %q before it was reported", out)
			}
			if err := w.Resume(ev.Pid); err != nil {
				t.Fatal(err)
			}
			if out := p.finish(t); out != "main flag=0\ndone\n" {
				t.Fatalf("output %q", out)
			}
			noEvent(t, w, 100*time.Millisecond)
		})
	}
}
