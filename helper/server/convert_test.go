package server

import (
	"encoding/json"
	"testing"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// TestPatchInfoJSONIsPatchJSON: Info's reply carries every field of patch.json under the
// same keys, in the same order, as when it embedded patchmeta.Patch: a field added to
// patch.json and not to the contract fails here.
func TestPatchInfoJSONIsPatchJSON(t *testing.T) {
	meta := &patchmeta.Patch{Schema: 1, UUID: "p", Name: "HP1", Version: "1", Release: "2", Arch: "x86_64", Kind: "user",
		Target:      patchmeta.Package{Name: "t", Epoch: 1, Version: "1.0", Release: "3", Arch: "x86_64", License: "MIT"},
		Description: "d", Sources: []patchmeta.Source{{File: "a.patch", SHA256: "ab"}}, Report: "report.json",
		Entities: []patchmeta.Entity{{UUID: "e", File: "t.o", TargetPath: "/usr/bin/t", BuildID: "cd", SHA256: "ef",
			Functions: []patchmeta.Function{{Name: "f", Pos: 2}}}}}
	st := []syscarebus.EntityState{{UUID: "e", Name: "t-1.0-3/HP1-1-2/t", Status: "ACTIVED"}}
	sums := map[string]string{"/usr/bin/t": "1 changed"}
	// The shape Info had before the contract held its own types.
	type entityInfo struct {
		patchmeta.Entity
		Name          string `json:"name"`
		Status        string `json:"status"`
		ReportSummary string `json:"report_summary,omitempty"`
	}
	old := struct {
		*patchmeta.Patch
		Dir      string                   `json:"dir"`
		Status   []syscarebus.EntityState `json:"status"`
		RPMName  string                   `json:"rpm_name"`
		Removed  bool                     `json:"removed,omitempty"`
		Entities []entityInfo             `json:"entities"`
	}{Patch: meta, Dir: "/d", Status: st, RPMName: meta.RPMName(), Removed: true,
		Entities: []entityInfo{{Entity: meta.Entities[0], Name: st[0].Name, Status: st[0].Status, ReportSummary: "1 changed"}}}
	want, _ := json.Marshal(old)
	got, _ := json.Marshal(patchInfo(&manager.Patch{Meta: meta, Dir: "/d", Gone: true}, st, sums))
	if string(got) != string(want) {
		t.Fatalf("Info JSON changed:\n got %s\nwant %s", got, want)
	}
}
