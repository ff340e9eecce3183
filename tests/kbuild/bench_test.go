package kbuild

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkKernelBuild times syscare-build for a one-file kernel fix (testdata/loadavg)
// twice against a tree cache of its own: cold (the tree unpacked by %prep and made
// ready for modules, as on a packager's first build) and then with that tree
// prepared. The kernel packages themselves come from the test cache; how long their
// download took is printed by TestInputsE2E. Goals (issue 13): 10 minutes cold,
// 2 minutes with the tree cached, on a 2-core machine.
func BenchmarkKernelBuild(b *testing.B) {
	bin, args := loadavgBuild(b, "BENCH")
	cache := b.TempDir()
	build := func(what string) (time.Duration, int64) {
		r := runBuild(b, bin, append(args, "--kernel-cache", cache)...)
		if r.code != 0 || r.rpm == "" {
			b.Fatalf("%s build: exit %d:\n%s", what, r.code, r.out)
		}
		st, err := os.Stat(r.rpm)
		if err != nil {
			b.Fatal(err)
		}
		return r.took, st.Size()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		os.RemoveAll(cache)
		cold, _ := build("cold")
		warm, size := build("cached")
		b.ReportMetric(cold.Seconds(), "cold-s")
		b.ReportMetric(warm.Seconds(), "cached-s")
		b.ReportMetric(float64(size), "rpm-bytes")
		b.Logf("kernel one-file fix: cold tree %v (goal 10m), tree cached %v (goal 2m); patch RPM %d bytes",
			cold.Round(time.Second), warm.Round(time.Second), size)
	}
}

// loadavgBuild returns syscare-build and the arguments of a build of the one-file
// loadavg fix as patch name (the kernel packages from the test cache).
func loadavgBuild(t testing.TB, name string) (string, []string) {
	t.Helper()
	needE2E(t)
	in := Prepare(t)
	bin := syscareBuild(t)
	fix, err := filepath.Abs("testdata/loadavg.patch")
	if err != nil {
		t.Fatal(err)
	}
	return bin, []string{"--patch-name", name, "--source", in.SRPM, "--debuginfo", in.Debuginfo, "--patch", fix}
}
