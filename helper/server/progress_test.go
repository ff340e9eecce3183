package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
)

// A batch of 1000 processes done in 1 s (one per ms): the first report, one per 100 ms,
// and the last pass; another entity's batch starts with its own first report.
func TestProgressThrottle(t *testing.T) {
	clock := time.Unix(0, 0)
	th := throttle{now: func() time.Time { return clock }}
	var passed []int
	for done := 1; done <= 1000; done++ {
		clock = clock.Add(time.Millisecond)
		if th.pass("activate\x00a", done, 1000) {
			passed = append(passed, done)
		}
	}
	if len(passed) < 10 || len(passed) > 12 || passed[0] != 1 || passed[len(passed)-1] != 1000 {
		t.Fatalf("passed %v", passed)
	}
	for i := 1; i < len(passed)-1; i++ {
		if passed[i]-passed[i-1] < 100 {
			t.Errorf("two signals %d ms apart: %v", passed[i]-passed[i-1], passed)
		}
	}
	// The next batch, at once: its first report passes, as does a one-process batch.
	if !th.pass("activate\x00b", 1, 3) || th.pass("activate\x00b", 2, 3) || !th.pass("activate\x00b", 3, 3) ||
		!th.pass("deactivate\x00b", 1, 1) {
		t.Error("a new batch's first or last report was held back")
	}
}

// The signals the helper sends match the XML: Progress (ssuu) and StateChanged (ssss).
func TestSignalContract(t *testing.T) {
	ss, err := syscarebus.Signals()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range ss {
		got[s.Name] = fmt.Sprint(s.Out)
	}
	// The argument types EmitProgress and Emit pass to Conn.Emit.
	want := map[string]string{
		syscarebus.SignalProgress:     fmt.Sprint([]string{"s", "s", "u", "u"}),
		syscarebus.SignalStateChanged: fmt.Sprint([]string{"s", "s", "s", "s"}),
	}
	for name, sig := range want {
		if got[name] != sig {
			t.Errorf("signal %s: XML %q, helper sends %q", name, got[name], sig)
		}
	}
	if len(got) != len(want) {
		t.Errorf("signals in the XML %v, the helper sends %d", got, len(want))
	}
}
