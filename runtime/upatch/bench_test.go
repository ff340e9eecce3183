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
	var patch, unpatch, stop, work, resume []time.Duration
	for n := 0; n < b.N; n++ {
		for i := 0; i < 200; i++ {
			st, err := e.PatchStats(v.pid(), obj, opts(uuid1))
			if err != nil {
				b.Fatal(err)
			}
			patch = append(patch, st.Freeze)
			stop, work = append(stop, st.Stop), append(work, st.Work)
			resume = append(resume, st.Freeze-st.Stop-st.Work)
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
	b.Logf("freeze of an 8-thread process, 10 functions: median %v (goal 250µs), p99 %v (goal 1ms); medians of its parts: stop %v, work %v, resume %v; unpatch median %v, p99 %v",
		us(percentile(patch, 0.5)), us(percentile(patch, 0.99)), us(percentile(stop, 0.5)), us(percentile(work, 0.5)),
		us(percentile(resume, 0.5)), us(percentile(unpatch, 0.5)), us(percentile(unpatch, 0.99)))
}

func us(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

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
	b.Logf("%d processes patched in %v (goal 0.5s for 1000), unpatched in %v",
		n, (total / time.Duration(b.N)).Round(time.Millisecond), (untotal / time.Duration(b.N)).Round(time.Millisecond))
}

// BenchmarkPatchNewProcess patches single-threaded processes right after they
// started, with an engine that has patched the binary before (as the helper does
// for each new process of a patched program): the time that adds to the start.
func BenchmarkPatchNewProcess(b *testing.B) {
	bin := buildBenchTarget(b)
	_, obj := buildPatch(b, "bench_fix.c", bin, "")
	e := NewEngine("/")
	warm := start(b, bin, nil)
	if err := e.Patch(warm.pid(), obj, opts(uuid1)); err != nil {
		b.Fatal(err)
	}
	var took []time.Duration
	for n := 0; n < b.N; n++ {
		for i := 0; i < 30; i++ {
			v := start(b, bin, nil)
			t0 := time.Now()
			if err := e.Patch(v.pid(), obj, opts(uuid1)); err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(t0))
			v.cmd.Process.Kill()
			v.cmd.Wait()
		}
	}
	b.ReportMetric(float64(percentile(took, 0.5).Microseconds()), "new-process-patch-µs")
	b.Logf("patch of a new process (warm engine): median %v (goal 1ms added to exec)", us(percentile(took, 0.5)))
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
	b.Logf("one call: %.2fns unpatched, %.2fns through the patch's jump (no goal)", before, after)
}

// benchProcesses is the number of processes BenchmarkPatchManyProcesses starts
// (SYSCARE_BENCH_PROCS, default 1000).
func benchProcesses() int {
	if n, err := strconv.Atoi(os.Getenv("SYSCARE_BENCH_PROCS")); err == nil && n > 0 {
		return n
	}
	return 1000
}
