package manager

import (
	"testing"

	"github.com/syscare/syscare/runtime/proc"
)

// BenchmarkLiveScan: reading the patch headers of every process on the host, which the
// helper does once at start (and for list/remove of a patch whose directory is gone).
func BenchmarkLiveScan(b *testing.B) {
	eng := NewUpatchEngine("")
	pids, _ := proc.Pids()
	for b.Loop() {
		if _, err := eng.Live(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(pids)), "processes")
}
