package kernel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// prepFromSRPM is what the builder does for %prep: unpack the source RPM, rpmbuild -bp.
func prepFromSRPM(srpm string, log *strings.Builder) func(ctx context.Context, top string) (string, error) {
	return func(ctx context.Context, top string) (string, error) {
		src := filepath.Join(top, "SOURCES")
		os.MkdirAll(src, 0o755)
		if err := run(ctx, log, src, nil, "sh", "-c", "rpm2cpio "+srpm+" | cpio -idm --quiet"); err != nil {
			return "", err
		}
		specs, _ := filepath.Glob(filepath.Join(src, "*.spec"))
		if err := run(ctx, log, top, nil, "rpmbuild", "-bp", "--nodeps", "--define", "_topdir "+top, specs[0]); err != nil {
			return "", err
		}
		return filepath.Join(top, "BUILD"), nil
	}
}

// kernelSRPM is the tests/kbuild source RPM, made by its TestInputsE2E (SYSCARE_E2E=1).
func kernelSRPM(t *testing.T) (srpm, release string) {
	if os.Getenv("SYSCARE_E2E") != "1" {
		t.Skip("kernel tree test: set SYSCARE_E2E=1 (needs tests/kbuild's cached kernel RPMs)")
	}
	m, _ := filepath.Glob("/var/cache/syscare-tests/kernel/*/rpms/kernel-*.src.rpm")
	if len(m) == 0 {
		t.Fatal("no cached kernel source RPM: run go test ./tests/kbuild -run TestInputsE2E with SYSCARE_E2E=1 first")
	}
	sort.Strings(m)
	srpm = m[len(m)-1]
	return srpm, filepath.Base(filepath.Dir(filepath.Dir(srpm)))
}

// TestPrepareTreeCached prepares the tree once into the shared cache (minutes), then
// takes it from there; the copy the build gets compiles, and editing it leaves the
// cached tree unchanged.
func TestPrepareTreeCached(t *testing.T) {
	srpm, release := kernelSRPM(t)
	cache := filepath.Join("/var/cache/syscare-tests/kernel", release, "trees")
	var log strings.Builder
	o := TreeOptions{SRPM: srpm, Release: release, Cache: cache, Work: t.TempDir(), Jobs: 2, Log: &log, Prep: prepFromSRPM(srpm, &log)}
	tr, err := PrepareTree(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(log.String()))
	}
	t.Logf("tree %s (cached %v, config from %s)", tr.Dir, tr.Cached, tr.ConfigFrom)
	// Modules built against the tree say they are for the running release.
	rel, err := os.ReadFile(filepath.Join(tr.Dir, "include/generated/utsrelease.h"))
	if err != nil || !strings.Contains(string(rel), `"`+release+`"`) {
		t.Fatalf("utsrelease.h %q (%v), want %s", rel, err, release)
	}
	o.Work = t.TempDir()
	tr2, err := PrepareTree(context.Background(), o)
	if err != nil || !tr2.Cached {
		t.Fatalf("second prepare: cached %v, %v", tr2 != nil && tr2.Cached, err)
	}
	// The copy is the build's: patching a file in it leaves the cache's alone.
	f := filepath.Join(tr2.Dir, "fs/proc/loadavg.c")
	before, _ := os.ReadFile(f)
	out, err := exec.Command("sh", "-c", "cd "+tr2.Dir+" && sed -i 's/%lu.%02lu /%lu.%02lu  /' fs/proc/loadavg.c").CombinedOutput()
	if err != nil {
		t.Fatalf("%v %s", err, out)
	}
	cachedFile, _ := filepath.Glob(filepath.Join(cache, "*", "tree", "fs/proc/loadavg.c"))
	if len(cachedFile) == 0 {
		t.Fatal("no cached tree")
	}
	if b, _ := os.ReadFile(cachedFile[0]); string(b) != string(before) {
		t.Fatal("editing the build's copy changed the cached tree")
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return s[len(s)-3000:]
	}
	return s
}
