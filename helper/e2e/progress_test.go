package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/tests/termtest"
	"github.com/syscare/syscare/tests/testenv"
)

// TestProgress: a patch going into and out of 8 running processes makes the helper send
// Progress signals whose count rises to 8 of 8 (the last always sent); syscare
// --progress prints them on stderr, and without --progress a piped syscare prints none.
func TestProgress(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	const n = 8
	for i := 0; i < n; i++ {
		s.startVictim()
	}
	conn, err := godbus.Connect(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.AddMatchSignal(godbus.WithMatchInterface(syscarebus.Interface), godbus.WithMatchMember(syscarebus.SignalProgress)); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan *godbus.Signal, 256)
	conn.Signal(sigs)
	// collect gathers one call's signals: up to the one counting every process (they
	// come in order), the call's last. They were sent before the call returned but
	// reach this connection on their own time, so a quiet spell proves nothing on a
	// loaded machine; only a hang meets the bound.
	collect := func() []syscarebus.Progress {
		var out []syscarebus.Progress
		guard := time.After(hangGuard)
		for {
			select {
			case sg := <-sigs:
				var p syscarebus.Progress
				if err := godbus.Store(sg.Body, &p.Operation, &p.Patch, &p.Done, &p.Total); err != nil {
					t.Fatalf("Progress signal %v: %v", sg.Body, err)
				}
				out = append(out, p)
				if p.Total > 0 && p.Done >= p.Total {
					return out
				}
			case <-guard:
				return out
			}
		}
	}
	entity := "victim-1.0-1/HP001-1-1/victim"
	check := func(op string, ps []syscarebus.Progress, stderr string) {
		t.Helper()
		if len(ps) == 0 || len(ps) > n {
			t.Fatalf("%s: %d Progress signals for %d processes: %+v", op, len(ps), n, ps)
		}
		for i, p := range ps {
			if p.Operation != op || p.Patch != entity || p.Total != n || p.Done < 1 || (i > 0 && p.Done <= ps[i-1].Done) {
				t.Errorf("%s: signal %d: %+v (all: %+v)", op, i, p, ps)
			}
			if want := fmt.Sprintf("%s %s: %d of %d processes\n", op, entity, p.Done, p.Total); !strings.Contains(stderr, want) {
				t.Errorf("syscare --progress did not print %q:\n%s", want, stderr)
			}
		}
		if last := ps[len(ps)-1]; last.Done != n {
			t.Errorf("%s: the last signal is %+v, not %d of %d", op, last, n, n)
		}
	}

	out, stderr, code := s.syscare("apply", "--progress", hp1.uuid)
	if code != 0 || !strings.Contains(out, "ACTIVED") {
		t.Fatalf("apply --progress: %d %q %q", code, out, stderr)
	}
	ps := collect()
	t.Logf("apply over %d processes: Progress %+v", n, ps)
	check("activate", ps, stderr)
	if strings.ContainsAny(stderr, "\r\033") {
		t.Errorf("piped --progress wrote terminal controls: %q", stderr)
	}

	out, stderr, code = s.syscare("remove", hp1.uuid)
	if code != 0 || strings.Contains(stderr, "processes") {
		t.Fatalf("remove piped, without --progress: %d %q %q", code, out, stderr)
	}
	ps = collect()
	// Every signal of the remove is its own, counting up to n: a stray or repeated
	// signal of the apply would land here and fail.
	if len(ps) == 0 || len(ps) > n || ps[len(ps)-1].Done != n {
		t.Errorf("remove: signals %+v, want 1..%d ending with %d of %d", ps, n, n, n)
	}
	for i, p := range ps {
		if p.Operation != "deactivate" || p.Patch != entity || p.Total != n || (i > 0 && p.Done <= ps[i-1].Done) {
			t.Errorf("remove: signal %d: %+v (all: %+v)", i, p, ps)
		}
	}
	if _, stderr, code := s.syscare("list", "--progress"); code != 2 || !strings.Contains(stderr, "--progress is an option of") {
		t.Errorf("list --progress: %d %q", code, stderr)
	}
}

// TestDNFPluginProgress: the dnf plugin's helper client (dnf-plugin/hotpatch.py, over
// python3-dbus with a GLib loop) hears the Progress signals of one Upgrade call over 6
// real processes, the last being 6 of 6, and gets the call's reply as before.
func TestDNFPluginProgress(t *testing.T) {
	py := "/usr/bin/python3"
	err := exec.Command(py, "-c", "import dnf, dbus.mainloop.glib, gi.repository.GLib").Run()
	testenv.Require(t, err == nil, "python3-dnf, python3-dbus or python3-gi missing (tests/deps.sh installs them)")
	s := newSandbox(t)
	s.install(hp1)
	const n = 6
	for i := 0; i < n; i++ {
		s.startVictim()
	}
	script := `import json, sys
import hotpatch
h = hotpatch.Helper.connect(sys.argv[1])
events = []
rows = h.upgrade([sys.argv[2]], progress=lambda *a: events.append(list(a)))
print(json.dumps({'rows': rows, 'events': events}))
`
	cmd := exec.Command(py, "-c", script, s.addr, hp1.uuid)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join(fx.repo, "dnf-plugin"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("plugin upgrade: %v %s", err, out)
	}
	var got struct {
		Rows   []map[string]string
		Events [][]any
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("plugin heard %v", got.Events)
	if len(got.Rows) != 1 || got.Rows[0]["status"] != "ACTIVED" || got.Rows[0]["action"] != "APPLIED" {
		t.Errorf("reply rows %+v", got.Rows)
	}
	if len(got.Events) == 0 {
		t.Fatal("no Progress reached the plugin")
	}
	last := fmt.Sprint(got.Events[len(got.Events)-1])
	if want := fmt.Sprintf("[activate victim-1.0-1/HP001-1-1/victim %d %d]", n, n); last != want {
		t.Errorf("last progress %s, want %s", last, want)
	}
	s.must("remove", hp1.uuid)
}

// TestProgressOnATerminal runs syscare apply in a terminal (tmux) over 5 processes and
// records what the terminal received: the live line counting processes, cleared before
// the result, which is all the screen keeps.
func TestProgressOnATerminal(t *testing.T) {
	termtest.Need(t)
	s := newSandbox(t)
	s.install(hp1)
	const n = 5
	for i := 0; i < n; i++ {
		s.startVictim()
	}
	screen, data := termtest.Run(t, "DBUS_SYSTEM_BUS_ADDRESS='"+s.addr+"' "+filepath.Join(fx.bin, "syscare")+" apply "+hp1.uuid,
		150, 20, time.Minute, nil)
	if !strings.Contains(screen, "EXIT=0") || !strings.Contains(screen, "HP001-1-1/victim: ACTIVED") || strings.Contains(screen, "processes") {
		t.Fatalf("syscare apply on a terminal, screen:\n%s", screen)
	}
	want := fmt.Sprintf("\r\033[Kactivate victim-1.0-1/HP001-1-1/victim: %d of %d processes\r\033[K", n, n)
	if !strings.Contains(string(data), want) {
		t.Errorf("the terminal did not receive %q:\n%q", want, data)
	}
	if i, j := strings.Index(string(data), want), strings.Index(string(data), "ACTIVED"); i < 0 || j < i {
		t.Errorf("the result came before the live line was cleared:\n%q", data)
	}
	s.must("remove", hp1.uuid)
}
