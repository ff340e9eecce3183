package main

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCLIApply8 measures `upatch-manage patch` of a 10-function patch into an
// 8-thread process, from the tool's start to its exit, and the same for unpatch.
func BenchmarkCLIApply8(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "upatch-manage")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	target := filepath.Join(dir, "bench_target")
	if out, err := exec.Command("gcc", "-O2", "-pthread", testdata("bench_target.c"), "-o", target).CombinedOutput(); err != nil {
		b.Fatalf("gcc: %v\n%s", err, out)
	}
	obj := filepath.Join(dir, "bench_fix.o")
	if out, err := exec.Command("gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(),
		testdata("bench_fix.c"), "-o", obj).CombinedOutput(); err != nil {
		b.Fatalf("gcc: %v\n%s", err, out)
	}
	cmd := exec.Command(target, "8")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphan when -timeout kills the benchmark
	stdout, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()
	bufio.NewScanner(stdout).Scan() // "ready"
	pid := strconv.Itoa(cmd.Process.Pid)
	const uuid = "55555555-5555-4555-8555-555555555555"
	timed := func(args ...string) time.Duration {
		start := time.Now()
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
		return time.Since(start)
	}
	var patch, unpatch []time.Duration
	for n := 0; n < b.N; n++ {
		for i := 0; i < 50; i++ {
			patch = append(patch, timed("patch", "--pid", pid, "--patch", obj, "--uuid", uuid, "--force"))
			unpatch = append(unpatch, timed("unpatch", "--pid", pid, "--uuid", uuid))
		}
	}
	med := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	b.ReportMetric(float64(med(patch).Microseconds()), "patch-cli-median-µs")
	b.ReportMetric(float64(med(unpatch).Microseconds()), "unpatch-cli-median-µs")
	b.Logf("8-thread apply, CLI start to exit: median %v (goal 5ms); unpatch median %v",
		med(patch).Round(10*time.Microsecond), med(unpatch).Round(10*time.Microsecond))
}
