package publish

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/syscare/syscare/helper/repo"
	"github.com/syscare/syscare/helper/repo/repotest"
)

func TestAddIdempotentAndConflict(t *testing.T) {
	ctx := context.Background()
	rpms := repotest.RPMs(t)
	dir := filepath.Join(t.TempDir(), "repo") // Add creates the repository from nothing
	req := AddRequest{RepoDir: dir, Advisory: "SA-1", CVEs: []string{"CVE-2024-1111"}, Severity: "Critical",
		Title: "fix the greeting", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}}
	res, err := Add(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || !slices.Equal(res.Copied, []string{"patch-hello-1.0-1-HP001-1-1.x86_64.rpm"}) {
		t.Fatalf("first add: %+v", res)
	}
	repomd := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "repodata", "repomd.xml"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	before := repomd()

	res, err = Add(ctx, req)
	if err != nil {
		t.Fatalf("re-add: %v", err)
	}
	if res.Changed || len(res.Copied) != 0 || repomd() != before {
		t.Fatalf("re-adding the same content changed the repository: %+v", res)
	}

	for name, bad := range map[string]AddRequest{
		"other cve":     {Advisory: "SA-1", CVEs: []string{"CVE-2024-2222"}, Severity: "Critical", Title: "fix the greeting"},
		"other title":   {Advisory: "SA-1", CVEs: []string{"CVE-2024-1111"}, Severity: "Critical", Title: "x"},
		"other package": {Advisory: "SA-1", CVEs: []string{"CVE-2024-1111"}, Severity: "Critical", Title: "fix the greeting", RPMs: []string{rpms["patch-hello-1.0-1-HP002-1-1"]}},
	} {
		bad.RepoDir = dir
		if bad.RPMs == nil {
			bad.RPMs = req.RPMs
		}
		if _, err := Add(ctx, bad); !errors.Is(err, ErrAdvisoryConflict) {
			t.Errorf("%s: error %v, want ErrAdvisoryConflict", name, err)
		}
	}
	if repomd() != before {
		t.Fatal("a refused add changed the repository")
	}

	// A second advisory merges with the first.
	if _, err := Add(ctx, AddRequest{RepoDir: dir, Advisory: "SA-2", RPMs: []string{rpms["patch-hello-1.0-1-HP002-1-1"]}}); err != nil {
		t.Fatal(err)
	}
	advs, _, inPrimary, err := repo.ReadPublished(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(advs) != 2 || advs[0].ID != "SA-1" || advs[1].ID != "SA-2" || advs[1].Type != "bugfix" ||
		!slices.Equal(advs[0].CVEs, []string{"CVE-2024-1111"}) || advs[0].Severity != "Critical" {
		t.Fatalf("advisories after merge: %+v", advs)
	}
	if !inPrimary["patch-hello-1.0-1-HP001-1-1.x86_64"] || !inPrimary["patch-hello-1.0-1-HP002-1-1.x86_64"] {
		t.Fatalf("primary lacks the patches: %v", inPrimary)
	}
}

func TestAddRefuses(t *testing.T) {
	ctx := context.Background()
	rpms := repotest.RPMs(t)
	dir := t.TempDir()
	cases := map[string]AddRequest{
		"not a patch":     {Advisory: "A", RPMs: []string{rpms["hello-1.0-1"]}},
		"no exact target": {Advisory: "A", RPMs: []string{rpms["patch-notes-1-1-X-1-1"]}},
		"bad cve":         {Advisory: "A", CVEs: []string{"CVE-24"}, RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}},
		"bad type":        {Advisory: "A", Type: "feature", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}},
		"bad severity":    {Advisory: "A", Severity: "urgent", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}},
		"bad advisory":    {Advisory: "a b", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}},
		"no rpms":         {Advisory: "A"},
		"not an rpm":      {Advisory: "A", RPMs: []string{"/etc/hostname"}},
	}
	for name, req := range cases {
		req.RepoDir = dir
		if _, err := Add(ctx, req); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// A file that is no RPM says so, not the reader's "invalid file descriptor" or EOF.
	text := filepath.Join(t.TempDir(), "notes.rpm")
	os.WriteFile(text, []byte("release notes\n"), 0o644)
	good, _ := os.ReadFile(rpms["patch-hello-1.0-1-HP001-1-1"])
	short := filepath.Join(t.TempDir(), "short.rpm")
	os.WriteFile(short, good[:300], 0o644)
	for path, want := range map[string]string{
		text:  `patch rpm ` + text + `: not an RPM package: it does not start with the RPM magic ed ab ee db (it starts with "rele")`,
		short: `patch rpm ` + short + `: not an RPM package: truncated: the file ends at byte 300, inside the signature or the header`,
	} {
		if _, err := Add(ctx, AddRequest{RepoDir: dir, Advisory: "A", RPMs: []string{path}}); err == nil || err.Error() != want {
			t.Errorf("error %v, want %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "repodata")); err == nil {
		t.Error("refused adds created metadata")
	}
	// A different file under an existing RPM's name is refused.
	if err := os.WriteFile(filepath.Join(dir, "patch-hello-1.0-1-HP001-1-1.x86_64.rpm"), []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Add(ctx, AddRequest{RepoDir: dir, Advisory: "A", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}})
	if err == nil || !strings.Contains(err.Error(), "different content") {
		t.Fatalf("error %v, want a different-content refusal", err)
	}
}

// TestLockSymlinkNotFollowed: a symlink planted at the lock file's name in a shared
// repository directory makes the publish fail; its target is never created.
func TestLockSymlinkNotFollowed(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "nologin")
	os.Symlink(target, filepath.Join(dir, ".syscare-repo.lock"))
	_, err := Add(context.Background(), AddRequest{RepoDir: dir, Advisory: "A", RPMs: []string{"/etc/hostname"}})
	if err == nil || !strings.Contains(err.Error(), "repository lock") {
		t.Fatalf("publish through a planted lock symlink: %v", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("symlink target created: %v", err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	repotest.Cleanup()
	os.Exit(code)
}
