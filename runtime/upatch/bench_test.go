package upatch

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func buildBenchTarget(b testing.TB) string {
	bin := filepath.Join(b.TempDir(), "bench_target")
	gcc(b, "-O2", "-pthread", testdata("bench_target.c"), "-o", bin)
	return bin
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

// BenchmarkFreeze measures how long an 8-thread process is stopped per patch and per
// unpatch of a 10-function patch, over 200 cycles.
func BenchmarkFreeze(b *testing.B) {
	bin := buildBenchTarget(b)
	v := start(b, bin, nil, "8")
	_, obj := buildPatch(b, "bench_fix.c", bin, "")
	e := NewEngine("/")
	var patch, unpatch, stop, work []time.Duration
	for n := 0; n < b.N; n++ {
		for i := 0; i < 200; i++ {
			st, err := e.PatchStats(v.pid(), obj, opts(uuid1))
			if err != nil {
				b.Fatal(err)
			}
			patch = append(patch, st.Freeze)
			stop, work = append(stop, st.Stop), append(work, st.Work)
			st, err = e.UnpatchStats(v.pid(), uuid1, opts(uuid1))
			if err != nil {
				b.Fatal(err)
			}
			unpatch = append(unpatch, st.Freeze)
		}
	}
	b.ReportMetric(float64(percentile(patch, 0.5).Microseconds()), "patch-median-µs")
	b.ReportMetric(float64(percentile(patch, 0.99).Microseconds()), "patch-p99-µs")
	b.ReportMetric(float64(percentile(stop, 0.5).Microseconds()), "patch-stop-median-µs")
	b.ReportMetric(float64(percentile(work, 0.5).Microseconds()), "patch-work-median-µs")
	b.ReportMetric(float64(percentile(unpatch, 0.5).Microseconds()), "unpatch-median-µs")
	b.ReportMetric(float64(percentile(unpatch, 0.99).Microseconds()), "unpatch-p99-µs")
}

// BenchmarkPatchManyProcesses patches 1000 running instances of one binary in one batch.
func BenchmarkPatchManyProcesses(b *testing.B) {
	n := benchProcesses()
	bin := buildBenchTarget(b)
	_, obj := buildPatch(b, "bench_fix.c", bin, "")
	var pids []int
	var cmds []*exec.Cmd
	var stdins []any // held open: each target blocks reading it
	defer func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	}()
	for i := 0; i < n; i++ {
		c := exec.Command(bin)
		stdin, _ := c.StdinPipe()
		stdins = append(stdins, stdin)
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		cmds = append(cmds, c)
		pids = append(pids, c.Process.Pid)
	}
	time.Sleep(500 * time.Millisecond) // let them all reach their read()
	e := NewEngine("/")
	b.ResetTimer()
	var total, untotal time.Duration
	for k := 0; k < b.N; k++ {
		t0 := time.Now()
		for _, r := range e.PatchAll(pids, obj, opts(uuid1)) {
			if r.Err != nil {
				b.Fatalf("pid %d: %v", r.Pid, r.Err)
			}
		}
		total += time.Since(t0)
		t0 = time.Now()
		for _, r := range e.UnpatchAll(pids, uuid1, opts(uuid1)) {
			if r.Err != nil {
				b.Fatalf("pid %d: %v", r.Pid, r.Err)
			}
		}
		untotal += time.Since(t0)
	}
	_ = stdins
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "patch-1000-ms")
	b.ReportMetric(float64(total.Microseconds())/float64(b.N*n), "µs/process")
	b.ReportMetric(float64(untotal.Milliseconds())/float64(b.N), "unpatch-1000-ms")
}

// BenchmarkCallOverhead compares the cost of one call of an unpatched function with the
// same call through the patch's jump.
func BenchmarkCallOverhead(b *testing.B) {
	bin := buildBenchTarget(b)
	v := start(b, bin, nil)
	_, obj := buildPatch(b, "bench_fix.c", bin, "")
	measure := func() float64 {
		v.stdin.Write([]byte("measure\n"))
		line := v.waitFor(b, func(l string) bool { return strings.HasPrefix(l, "ns=") })
		var ns float64
		var f0 int
		fmt.Sscanf(line, "ns=%f f0=%d", &ns, &f0)
		return ns
	}
	e := NewEngine("/")
	var before, after float64
	for k := 0; k < b.N; k++ {
		before = measure()
		if err := e.Patch(v.pid(), obj, opts(uuid1)); err != nil {
			b.Fatal(err)
		}
		after = measure()
		if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(before, "ns/call-unpatched")
	b.ReportMetric(after, "ns/call-patched")
}

// benchProcesses is the number of processes BenchmarkPatchManyProcesses starts
// (SYSCARE_BENCH_PROCS, default 1000).
func benchProcesses() int {
	if n, err := strconv.Atoi(os.Getenv("SYSCARE_BENCH_PROCS")); err == nil && n > 0 {
		return n
	}
	return 1000
}
