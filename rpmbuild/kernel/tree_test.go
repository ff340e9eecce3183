package kernel

import (
	"context"
	"github.com/syscare/syscare/tests/kbuild"
	"github.com/syscare/syscare/tests/kernel/qemuboot"
	"github.com/syscare/syscare/tests/testenv"
	"os"
	"os/exec"
	"path/filepath"
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

// kernelSRPM is the kernel source RPM tests/kbuild makes from Debian's packages (made
// here if no other test package has made it yet), behind the long-test switch.
func kernelSRPM(t *testing.T) (srpm, release string) {
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "kernel tree test (apt-get download into the shared cache)")
	in := kbuild.Prepare(t)
	return in.SRPM, in.ABI
}

// TestPrepareTreeCached prepares the tree once into the shared cache (minutes), then
// takes it from there; the copy the build gets compiles, and editing it leaves the
// cached tree unchanged.
func TestPrepareTreeCached(t *testing.T) {
	srpm, release := kernelSRPM(t)
	cache := filepath.Join(qemuboot.Cache(t, release), "trees")
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
