package server

import (
	"os"
	"path/filepath"
	"testing"
)

// The report's file name comes from patch.json: only a plain name in the patch
// directory is read, and a malformed report gives no summary instead of an error.
func TestReportSummaries(t *testing.T) {
	d := t.TempDir()
	dir := filepath.Join(d, "patch")
	os.MkdirAll(dir, 0o755)
	good := `[{"schema":1,"target":"/usr/bin/a","summary":"1 changed functions"},{"target":"/usr/lib/b.so","summary":"2 changed functions"}]`
	os.WriteFile(filepath.Join(dir, "report.json"), []byte(good), 0o644)
	os.WriteFile(filepath.Join(d, "outside.json"), []byte(good), 0o644)
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"target":`), 0o644)
	got := reportSummaries(dir, "report.json")
	if got["/usr/bin/a"] != "1 changed functions" || got["/usr/lib/b.so"] != "2 changed functions" {
		t.Errorf("summaries %q", got)
	}
	for _, f := range []string{"", "../outside.json", "bad.json", "missing.json", ".", ".."} {
		if got := reportSummaries(dir, f); len(got) != 0 {
			t.Errorf("report %q: %q, want none", f, got)
		}
	}
}
