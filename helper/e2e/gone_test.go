package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/dbus"
)

// TestRestartWithPatchDirectoryMissing: the helper dies, and while it is away the
// directory of a live patch disappears (an RPM upgrade in progress). The next helper
// finds the patch in the process's header: it reports it as applied with its process,
// and remove takes it out of the process for real.
func TestRestartWithPatchDirectoryMissing(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	s.install(hp2)
	v := s.startVictim()
	s.must("apply", hp1.uuid, hp2.uuid)
	s.must("accept", hp2.uuid)
	s.waitOutput(v, "2 20")

	s.killHelper()
	patches := filepath.Join(s.root, "usr/lib/syscare/patches")
	aside := filepath.Join(s.dir, "aside")
	os.MkdirAll(aside, 0o755)
	if err := os.Rename(filepath.Join(patches, hp1.uuid), filepath.Join(aside, hp1.uuid)); err != nil {
		t.Fatal(err)
	}
	// A helper killed inside an atomic write leaves its temp file.
	tmp := filepath.Join(s.root, "var/lib/syscare/.state.json.tmp4242")
	os.WriteFile(tmp, []byte(`{"schema":`), 0o600)

	if st := s.status(hp1.uuid); st != "ACTIVED" {
		t.Fatalf("HP001 with its directory missing: %s", st)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temp file not cleaned at start: %v", err)
	}
	pid := v.cmd.Process.Pid
	list, warn, code := s.syscare("list")
	if code != 0 || !strings.Contains(list, "victim-1.0-1/HP001-1-1/victim") ||
		!strings.Contains(warn, "HP001-1-1/victim: patch directory removed while applied; live in "+fmt.Sprintf("pid %d", pid)) {
		t.Fatalf("list does not show the live patch without directory: exit %d\n%s%s", code, list, warn)
	}
	var ps []syscarebus.ProcessState
	json.Unmarshal([]byte(s.must("--json", "processes", hp1.uuid)), &ps)
	if len(ps) != 1 || int(ps[0].Pid) != pid || ps[0].Status != "ACTIVED" {
		t.Fatalf("processes: %+v", ps)
	}
	if info := s.must("info", hp1.uuid); !strings.Contains(info, "removed") {
		t.Errorf("info does not say the files are gone:\n%s", info)
	}
	// Without its files it cannot come back on, but it comes out.
	s.must("deactive", hp1.uuid)
	s.waitOutput(v, "1 20")
	if e := s.fails("active", hp1.uuid); !strings.Contains(e, "gone") {
		t.Fatalf("active without files: %s", e)
	}
	s.must("remove", hp1.uuid)
	s.waitOutput(v, "1 20")
	if e := s.fails("status", hp1.uuid); !strings.Contains(e, "not found") {
		t.Fatalf("removed patch still known: %s", e)
	}

	// The state file is lost as well: the header alone is the record.
	s.killHelper()
	os.Remove(filepath.Join(s.root, "var/lib/syscare/state.json"))
	if err := os.Rename(filepath.Join(patches, hp2.uuid), filepath.Join(aside, hp2.uuid)); err != nil {
		t.Fatal(err)
	}
	if st := s.status(hp2.entity); st != "ACTIVED" {
		t.Fatalf("HP002 from its header alone: %s", st)
	}
	s.must("remove", hp2.entity)
	s.waitOutput(v, "1 10")
	if e := s.fails("status", hp2.entity); !strings.Contains(e, "not found") {
		t.Fatalf("removed patch still known: %s", e)
	}
}
