package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestHealthGate drives the health gate over the bus against a live process. The checks
// run the target program itself (`victim once`), a new process that the helper must
// patch while the soak runs: a healthy soak accepts (and reads are answered during it);
// a patch that breaks the service (world() no longer 10) fails its check and the whole
// upgrade goes back, the superseded patch in the running process again; a hung check is
// killed at its timeout and counts as failed.
func TestHealthGate(t *testing.T) {
	s := newSandbox(t)
	s.install(hp1)
	s.install(hpBoth)
	v := s.startVictim()
	once := filepath.Join(s.root, "usr/bin/victim") + " once"
	good := `sh -c 'test "$(` + once + `)" = "2 10"'`

	type result struct {
		out, errOut string
		code        int
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		out, errOut, code := s.syscare("apply", "--health", good, "--soak", "1500ms", "--interval", "300ms", "--accept", hp1.uuid)
		done <- result{out, errOut, code}
	}()
	// During the soak the patch is ACTIVED, in the process, and reads are answered.
	waitForD(t, hangGuard, func() bool { return s.status(hp1.uuid) == "ACTIVED" })
	if len(done) != 0 {
		t.Fatalf("status answered ACTIVED only after the soak's end")
	}
	s.waitOutput(v, "2 10")
	r := <-done
	// Six rounds (at once, then every 300ms over 1.5s); fewer when a loaded machine makes a
	// round longer than the interval, never fewer than the first and the last.
	healthy := regexp.MustCompile(`victim-1\.0-1/HP001-1-1/victim: ACCEPTED \(applied\): healthy: [2-6] run\(s\) of ` + "`" + regexp.QuoteMeta(good) + "`" + ` over 1\.5s`)
	if r.code != 0 || !healthy.MatchString(r.out) {
		t.Fatalf("healthy apply: exit %d: %s%s", r.code, r.out, r.errOut)
	}
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Fatalf("the soak of 1.5s ended after %s", took)
	}

	// HP004 also changes world(): the service's check sees 20 and the upgrade goes back.
	bad := `sh -c 'out=$(` + once + `); echo "victim once: $out"; test "${out#* }" = 10'`
	_, errOut, code := s.syscare("upgrade", "--health", "true", "--health", bad, "--soak", "1s", "--accept", hpBoth.uuid)
	if code != 1 || !strings.Contains(errOut, "health check failed: `"+bad+"` failed after") ||
		!strings.Contains(errOut, "exit status 1; output: victim once: 2 20") ||
		!strings.Contains(errOut, "put back: victim-1.0-1/HP001-1-1/victim (ACCEPTED), victim-1.0-1/HP004-1-1/victim (NOT-APPLIED)") {
		t.Fatalf("unhealthy upgrade: exit %d: %s", code, errOut)
	}
	s.waitOutput(v, "2 10")
	if st, st4 := s.status(hp1.uuid), s.status(hpBoth.uuid); st != "ACCEPTED" || st4 != "NOT-APPLIED" {
		t.Fatalf("after the rollback HP001 is %s, HP004 %s", st, st4)
	}

	start = time.Now()
	_, errOut, code = s.syscare("upgrade", "--health", "sleep 60", "--check-timeout", "300ms", hpBoth.uuid)
	// Well under the check's 60 s shows it was killed; an upgrade and its rollback on a
	// loaded machine may take several seconds.
	if code != 1 || !strings.Contains(errOut, "`sleep 60` failed after") || !strings.Contains(errOut, "killed at its timeout of 300ms") ||
		time.Since(start) > 45*time.Second {
		t.Fatalf("hung check: exit %d after %s: %s", code, time.Since(start), errOut)
	}
	s.waitOutput(v, "2 10")
	if st := s.status(hpBoth.uuid); st != "NOT-APPLIED" {
		t.Fatalf("after the hung check HP004 is %s", st)
	}
}
