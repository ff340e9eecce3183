package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
)

// TestUpgrade drives the Upgrade method over a real bus against a live process: a
// failure in the middle puts everything back (the superseded patch goes into the process
// again), a good upgrade supersedes, applies and accepts in one call, a second one
// changes nothing, and a caller who may not change the system is refused.
func TestUpgrade(t *testing.T) {
	s := newSandbox(t)
	// HP004 replaces world but its file does not match patch.json: it fails verification
	// after HP001 went out and HP003 came in.
	bad := patchSpec{uuid: "44444444-0000-4000-8000-000000000004", entity: "44444444-0000-4000-8000-0000000000e4",
		name: "HP004", object: "world20", funcs: []string{"world"}, corrupt: true}
	s.install(hp1)
	v := s.startVictim()
	s.must("apply", hp1.uuid)
	s.waitOutput(v, "2 10")
	s.install(hp3) // the cumulative patch arrives; Upgrade finds it without a rescan
	s.install(bad)

	_, errOut, code := s.syscare("upgrade", "--accept", hp3.uuid, bad.uuid)
	if code != 1 || !strings.Contains(errOut, "apply victim-1.0-1/HP004-1-1/victim") || !strings.Contains(errOut, "sha256") ||
		!strings.Contains(errOut, "put back: victim-1.0-1/HP001-1-1/victim (ACTIVED), victim-1.0-1/HP003-1-1/victim (NOT-APPLIED)") {
		t.Fatalf("upgrade with a corrupt patch: exit %d: %s", code, errOut)
	}
	s.waitOutput(v, "2 10")
	for id, want := range map[string]string{hp1.uuid: "ACTIVED", hp3.uuid: "NOT-APPLIED", bad.uuid: "NOT-APPLIED"} {
		if st := s.status(id); st != want {
			t.Fatalf("after the failed upgrade %s is %s, want %s", id, st, want)
		}
	}

	c, err := syscarebus.Connect(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rows, err := c.Upgrade(context.Background(), []string{"victim-1.0-1/HP003"}, true, false)
	if err != nil {
		t.Fatal(err)
	}
	s.waitOutput(v, "3 10")
	want := []syscarebus.UpgradeEntry{
		{UUID: hp1.entity, Name: "victim-1.0-1/HP001-1-1/victim", OldStatus: "ACTIVED", Status: "NOT-APPLIED",
			Action: syscarebus.UpgradeSuperseded, Detail: "superseded by HP003-1-1"},
		{UUID: hp3.entity, Name: "victim-1.0-1/HP003-1-1/victim", OldStatus: "NOT-APPLIED", Status: "ACCEPTED",
			Action: syscarebus.UpgradeApplied}}
	if len(rows) != len(want) || rows[0] != want[0] || rows[1] != want[1] {
		t.Fatalf("upgrade reply %+v, want %+v", rows, want)
	}

	var again []syscarebus.UpgradeEntry
	if err := json.Unmarshal([]byte(s.must("--json", "upgrade", "--accept", hp3.uuid)), &again); err != nil ||
		len(again) != 1 || again[0].Action != syscarebus.UpgradeUnchanged || again[0].Status != "ACCEPTED" {
		t.Fatalf("second upgrade: %+v %v", again, err)
	}
	if out := s.must("upgrade", hp3.uuid); out != "victim-1.0-1/HP003-1-1/victim: ACCEPTED (unchanged)\n" {
		t.Fatalf("upgrade output %q", out)
	}

	_, errOut, code = s.syscareAs("nobody", "upgrade", hp1.uuid)
	if code == 0 || !strings.Contains(errOut, "access denied") {
		t.Fatalf("upgrade as nobody: exit %d: %s", code, errOut)
	}
	s.waitOutput(v, "3 10")
	if st := s.status(hp1.uuid); st != "NOT-APPLIED" {
		t.Fatalf("a denied upgrade changed HP001 to %s", st)
	}
	// A misspelt option is refused by name and changes nothing.
	call := c.Conn().Object(syscarebus.BusName, syscarebus.ObjectPath).Call(syscarebus.Interface+".Upgrade", 0,
		[]string{hp1.uuid}, map[string]godbus.Variant{"acept": godbus.MakeVariant(true)})
	if syscarebus.ErrorName(call.Err) != syscarebus.ErrorNotSupported || !strings.Contains(syscarebus.ErrorMessage(call.Err), `"acept"`) {
		t.Fatalf("misspelt option: %v", call.Err)
	}
	// Going back to the older patch is an upgrade too: HP003 is superseded.
	if _, err = c.Upgrade(context.Background(), []string{hp1.uuid}, false, false); err != nil {
		t.Fatal(err)
	}
	s.waitOutput(v, "2 10")
	if st := s.status(hp3.uuid); st != "NOT-APPLIED" {
		t.Fatalf("HP003 after upgrading to HP001: %s", st)
	}
}
