package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/rpmbuild/builder"
	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// withReport points the installed patch's patch.json at a report file written by write.
func (s *sandbox) withReport(p patchSpec, write func(path string) error) {
	s.t.Helper()
	dir := filepath.Join(s.root, "usr/lib/syscare/patches", p.uuid)
	meta, err := patchmeta.Load(dir)
	if err != nil {
		s.t.Fatal(err)
	}
	meta.Report = builder.ReportFile
	if err := write(filepath.Join(dir, meta.Report)); err != nil {
		s.t.Fatal(err)
	}
	var b bytes.Buffer
	if err := meta.Encode(&b); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, patchmeta.FileName), b.Bytes(), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// syscare info shows the summary of the builder's patch report (the file syscare build
// puts next to patch.json) for each entity, in text and in --json; a patch without a
// report, or with a broken one, shows none and info still answers.
func TestInfoReportSummary(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	s.install(hp2)
	s.install(hp3)
	rp := diff.MergeReports("/usr/bin/victim", &diff.Report{Schema: diff.ReportSchema, Files: []string{"victim.c"},
		Changed: []diff.FuncChange{{Name: "greet", File: "victim.c", Why: diff.WhyCode},
			{Name: "main", File: "victim.c", Why: diff.WhyInlining, Detail: "carries an inlined copy of changed greet"}},
		New: []string{"greet_slow"}, LineOnly: []string{"world"}, Warnings: []string{"main is replaced but will not run again"}})
	want := rp.Summary()
	if !strings.Contains(want, "2 changed functions") {
		t.Fatalf("summary %q", want)
	}
	s.withReport(hp1, func(path string) error { return builder.WriteReportFile(path, []*diff.Report{rp}) })
	s.withReport(hp3, func(path string) error { return os.WriteFile(path, []byte("{not json"), 0o644) })

	info := s.must("info", hp1.uuid)
	if !strings.Contains(info, "      report: "+want+"\n") {
		t.Errorf("info lacks the report summary %q:\n%s", want, info)
	}
	var ps []syscarebus.PatchInfo
	if err := json.Unmarshal([]byte(s.must("--json", "info", hp1.uuid, hp2.uuid, hp3.uuid)), &ps); err != nil || len(ps) != 3 {
		t.Fatalf("info --json: %v %+v", err, ps)
	}
	got := map[string]string{}
	for _, p := range ps {
		if len(p.Entities) != 1 {
			t.Fatalf("%s: entities %+v", p.UUID, p.Entities)
		}
		got[p.UUID] = p.Entities[0].ReportSummary
	}
	if got[hp1.uuid] != want || got[hp2.uuid] != "" || got[hp3.uuid] != "" {
		t.Errorf("report summaries %q, want %q for %s only", got, want, hp1.uuid)
	}
	if info := s.must("info", hp2.uuid, hp3.uuid); strings.Contains(info, "report:") && strings.Contains(info, "changed functions") {
		t.Errorf("a summary shown without a valid report:\n%s", info)
	}
}
