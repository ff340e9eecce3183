package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
)

func rssKB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return -1
}

// listOnce calls List over a fresh connection and returns the number of rows.
func listOnce(b *testing.B, addr string) int {
	c, err := syscarebus.Connect(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	es, err := c.List(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	return len(es)
}

// BenchmarkColdActivation: from a method call with no helper running to its reply
// (bus activation, helper start, patch scan, state restore, name claim, reply).
func BenchmarkColdActivation(b *testing.B) {
	s := newSandbox(b)
	s.install(hp1)
	const reps = 10
	var total time.Duration
	for range b.N {
		for range reps {
			if s.helperPid() != 0 {
				s.killHelper()
			}
			start := time.Now()
			listOnce(b, s.addr)
			total += time.Since(start)
		}
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(reps*b.N), "ms/activation")
	b.ReportMetric(float64(rssKB(s.helperPid())), "KB-idle-RSS")
}

// BenchmarkList1000: `syscare list` with 1000 installed patches, cold (activation plus
// scan of 1000 patch directories) and warm.
func BenchmarkList1000(b *testing.B) {
	s := newSandbox(b)
	for i := range 1000 {
		p := hp1
		p.uuid = fmt.Sprintf("%08x-0000-4000-8000-000000000001", i+0x10000)
		p.entity = fmt.Sprintf("%08x-0000-4000-8000-0000000000e1", i+0x10000)
		p.name = fmt.Sprintf("HP%04d", i)
		s.install(p)
	}
	cli := func() time.Duration {
		start := time.Now()
		out := s.must("list")
		d := time.Since(start)
		if n := strings.Count(out, "\n"); n != 1001 {
			b.Fatalf("list printed %d lines", n)
		}
		return d
	}
	var cold, warm time.Duration
	for range b.N {
		if s.helperPid() != 0 {
			s.killHelper()
		}
		cold += cli()
		warm += cli()
	}
	b.ReportMetric(float64(cold.Milliseconds())/float64(b.N), "ms/cold-list")
	b.ReportMetric(float64(warm.Milliseconds())/float64(b.N), "ms/warm-list")
	b.ReportMetric(float64(rssKB(s.helperPid())), "KB-RSS-1000-installed")
}

// BenchmarkActive100: helper RSS with 100 active patches (stacked with --force on one
// function of one running process), and the time of that one 100-id transaction.
func BenchmarkActive100(b *testing.B) {
	s := newSandbox(b)
	var ids []string
	for i := range 100 {
		p := hp1
		p.uuid = fmt.Sprintf("%08x-0000-4000-8000-000000000001", i+0x20000)
		p.entity = fmt.Sprintf("%08x-0000-4000-8000-0000000000e1", i+0x20000)
		p.name = fmt.Sprintf("HP%04d", i)
		s.install(p)
		ids = append(ids, p.uuid)
	}
	s.startVictim()
	listOnce(b, s.addr)
	idle := rssKB(s.helperPid())
	var d time.Duration
	for range b.N {
		start := time.Now()
		s.must(append([]string{"apply", "--force"}, ids...)...)
		d += time.Since(start)
		if b.N > 1 {
			s.must(append([]string{"remove"}, ids...)...)
		}
	}
	b.ReportMetric(float64(idle), "KB-RSS-idle")
	b.ReportMetric(float64(rssKB(s.helperPid())), "KB-RSS-100-active")
	b.ReportMetric(float64(d.Milliseconds())/float64(b.N), "ms/apply-100")
}

// BenchmarkNewProcess: time from exec to patched, as the extra run time of a short
// program whose target has an active patch over the same program without one.
func BenchmarkNewProcess(b *testing.B) {
	s := newSandbox(b)
	s.install(hp1)
	bin := filepath.Join(s.root, "usr/bin/victim")
	run := func(want string) time.Duration {
		start := time.Now()
		out, err := exec.Command(bin, "once").Output()
		d := time.Since(start)
		if err != nil || string(out) != want {
			b.Fatalf("victim once: %q %v, want %q", out, err, want)
		}
		return d
	}
	const reps = 20
	var plain, patched time.Duration
	for range b.N {
		for range reps {
			plain += run("1 10\n")
		}
		s.must("apply", hp1.uuid)
		for range reps {
			patched += run("2 10\n")
		}
		s.must("remove", hp1.uuid)
	}
	n := float64(reps * b.N)
	b.ReportMetric(float64(plain.Microseconds())/n/1000, "ms/run-unpatched")
	b.ReportMetric(float64(patched.Microseconds())/n/1000, "ms/run-patched-at-exec")
	b.ReportMetric(float64((patched-plain).Microseconds())/n/1000, "ms/exec-to-patched")
}
