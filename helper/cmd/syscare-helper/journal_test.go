package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// journaldScript runs in a private mount namespace, so that a real systemd-journald
// owns /run/systemd/journal and /run/log/journal there and the host's are untouched.
// The helper runs as systemd runs a service: its stderr is a journal stream (systemd-cat)
// and JOURNAL_STREAM names that stream's device and inode.
const journaldScript = `set -eu
mount -t tmpfs none /run/systemd 2>/dev/null || { mkdir -p /run/systemd && mount -t tmpfs none /run/systemd; }
mkdir -p /run/systemd/journal /run/log
mount -t tmpfs none /run/log
/lib/systemd/systemd-journald & jpid=$!
for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
dbus-daemon --session --nofork --print-address=3 3>"$WORK/address" & dpid=$!
for i in $(seq 100); do [ -s "$WORK/address" ] && break; sleep 0.05; done
addr=$(head -1 "$WORK/address")
systemd-cat -t syscare-helper sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" --bus "$1" --root "$2" --idle-timeout 1s --no-watch' \
	"$HELPER" "$addr" "$WORK/root" & hpid=$!
for i in $(seq 100); do "$SYSCARE" --bus "$addr" list >/dev/null 2>&1 && break; sleep 0.05; done
"$SYSCARE" --bus "$addr" apply nosuch-1.0-1/HP404 >/dev/null 2>&1 && { echo "apply of a missing patch succeeded" >&2; exit 1; }
wait $hpid
kill $dpid
journalctl -D /run/log/journal --no-pager -o json PATCH=nosuch-1.0-1/HP404 >"$WORK/patch.json"
journalctl -D /run/log/journal --no-pager -o json SYSLOG_IDENTIFIER=syscare-helper >"$WORK/all.json"
kill $jpid
`

// TestJournalFields: under systemd the helper's entries reach a real journald with
// their priority and fields, and `journalctl PATCH=...` selects them.
func TestJournalFields(t *testing.T) {
	testenv.NeedRoot(t, "mount namespace for a private journald")
	for _, c := range []string{"/lib/systemd/systemd-journald", "journalctl", "systemd-cat", "dbus-daemon", "unshare"} {
		_, err := exec.LookPath(c)
		testenv.Require(t, err == nil, c+" not found (systemd, dbus-daemon and util-linux packages)")
	}
	work := t.TempDir()
	os.MkdirAll(filepath.Join(work, "root/usr/lib/syscare/patches"), 0o755)
	build := exec.Command("go", "build", "-o", work+"/", ".", "../syscare")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", journaldScript)
	cmd.Env = append(os.Environ(), "WORK="+work, "HELPER="+filepath.Join(work, "syscare-helper"), "SYSCARE="+filepath.Join(work, "syscare"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("journald run: %v\n%s", err, out)
	}
	entries := func(file string) []map[string]any {
		f, err := os.Open(filepath.Join(work, file))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var out []map[string]any
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e map[string]any
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			out = append(out, e)
		}
		return out
	}
	all := entries("all.json")
	var msgs []string
	for _, e := range all {
		msgs = append(msgs, e["MESSAGE"].(string))
		// Every entry came through the native protocol: none is a line of text on the
		// stderr stream.
		if e["_TRANSPORT"] != "journal" {
			t.Errorf("entry by %v, want the native protocol: %v", e["_TRANSPORT"], e)
		}
	}
	if len(all) < 3 || !strings.Contains(strings.Join(msgs, "|"), "serving") || !strings.Contains(strings.Join(msgs, "|"), "idle, exiting") {
		t.Errorf("helper entries: %q", msgs)
	}
	sel := entries("patch.json")
	if len(sel) != 1 {
		t.Fatalf("journalctl PATCH=nosuch-1.0-1/HP404 selected %d entries, want 1: %v", len(sel), sel)
	}
	e := sel[0]
	for k, want := range map[string]string{"MESSAGE": "transaction failed", "PRIORITY": "4", "OPERATION": "Apply",
		"SYSLOG_IDENTIFIER": "syscare-helper", "FORCE": "false"} {
		if e[k] != want {
			t.Errorf("%s = %v, want %q (entry %v)", k, e[k], want, e)
		}
	}
	if s, _ := e["ERROR"].(string); !strings.Contains(s, "HP404") {
		t.Errorf("ERROR = %v, want the failure naming the patch", e["ERROR"])
	}
	if e["_PID"] == nil {
		t.Errorf("no _PID: journald did not see the sender")
	}
}
