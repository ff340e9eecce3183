package repo_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/repo"
	"github.com/syscare/syscare/helper/repo/repotest"
	"github.com/syscare/syscare/rpmbuild/publish"
	"github.com/ulikunitz/xz"
)

// Resolution of repositories that rpmbuild/publish published: these tests are outside
// package repo because publish imports it.

var host = repo.Host

var allPatches = []string{"patch-hello-1.0-1-HP001-1-1", "patch-hello-1.0-1-HP002-1-1",
	"patch-hello-1.0-2-HP001-1-1", "patch-other-3.0-1-HP001-1-2", "patch-notes-1-1-X-1-1", "hello-1.0-1"}

// publishedRepo is a repository with every patch fixture and two advisories.
func publishedRepo(t *testing.T, extra ...string) string {
	t.Helper()
	dir := repotest.NewRepo(t, extra, allPatches...)
	rpms := repotest.RPMs(t)
	ctx := context.Background()
	for _, a := range []publish.AddRequest{
		{Advisory: "SA-2024-0001", CVEs: []string{"CVE-2024-0001"}, Severity: "important",
			RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"], rpms["patch-hello-1.0-2-HP001-1-1"]}},
		{Advisory: "SA-2024-0002", CVEs: []string{"CVE-2024-0002", "CVE-2024-0003"},
			RPMs: []string{rpms["patch-hello-1.0-1-HP002-1-1"]}},
		{Advisory: "BA-2024-0003", Type: "bugfix", RPMs: []string{rpms["patch-other-3.0-1-HP001-1-2"]}},
	} {
		a.RepoDir = dir
		if _, err := publish.Add(ctx, a); err != nil {
			t.Fatalf("add %s: %v", a.Advisory, err)
		}
	}
	return dir
}

func packages(cs []syscarebus.Candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Package)
	}
	return out
}

func TestResolve(t *testing.T) {
	dir := publishedRepo(t)
	ctx := context.Background()
	cases := []struct {
		name string
		req  repo.Request
		want []string
	}{
		{"newest per target", repo.Request{}, []string{"patch-hello-1.0-1-HP002-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"all", repo.Request{All: true}, []string{"patch-hello-1.0-1-HP001-1-1.x86_64", "patch-hello-1.0-1-HP002-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"by cve", repo.Request{CVEs: []string{"cve-2024-0001"}}, []string{"patch-hello-1.0-1-HP001-1-1.x86_64"}},
		{"by second cve", repo.Request{CVEs: []string{"CVE-2024-0003"}}, []string{"patch-hello-1.0-1-HP002-1-1.x86_64"}},
		{"by advisory", repo.Request{Advisories: []string{"BA-2024-0003"}}, []string{"patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"cve or advisory", repo.Request{CVEs: []string{"CVE-2024-0001"}, Advisories: []string{"BA-2024-0003"}},
			[]string{"patch-hello-1.0-1-HP001-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"unknown cve", repo.Request{CVEs: []string{"CVE-1999-0001"}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.MetadataDirs = []string{dir}
			c.req.Installed = host
			got, err := repo.Resolve(ctx, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(packages(got), c.want) {
				t.Fatalf("got %v, want %v", packages(got), c.want)
			}
		})
	}

	got, err := repo.Resolve(ctx, repo.Request{MetadataDirs: []string{filepath.Join(dir, "repodata")}, Installed: host, All: true})
	if err != nil {
		t.Fatal(err)
	}
	hp1 := got[0]
	want := syscarebus.Candidate{Advisory: "SA-2024-0001", Severity: "Important", Type: "security",
		Title: "hot patch for hello-1.0-1, hello-1.0-2", CVEs: []string{"CVE-2024-0001"},
		Package: "patch-hello-1.0-1-HP001-1-1.x86_64", Location: filepath.Join(dir, "patch-hello-1.0-1-HP001-1-1.x86_64.rpm"),
		RepoID: filepath.Join(dir, "repodata"), Target: host[0], PatchName: "HP001", PatchVersion: "1", PatchRelease: "1"}
	if !candEqual(hp1, want) {
		t.Errorf("candidate\n got %+v\nwant %+v", hp1, want)
	}
	other := got[2]
	if other.Target != host[1] || other.Type != "bugfix" || len(other.CVEs) != 0 || other.PatchRelease != "2" {
		t.Errorf("epoch target candidate: %+v", other)
	}
}

func candEqual(a, b syscarebus.Candidate) bool {
	return a.Advisory == b.Advisory && a.Severity == b.Severity && a.Type == b.Type && a.Title == b.Title &&
		slices.Equal(a.CVEs, b.CVEs) && a.Package == b.Package && a.Location == b.Location && a.RepoID == b.RepoID &&
		a.Target == b.Target && a.PatchName == b.PatchName && a.PatchVersion == b.PatchVersion &&
		a.PatchRelease == b.PatchRelease && a.Installed == b.Installed
}

// TestResolveOtherTargetVersion: a host with hello-1.0-2 is offered only the patch built
// for 1.0-2, never the ones for 1.0-1.
func TestResolveOtherTargetVersion(t *testing.T) {
	dir := publishedRepo(t)
	inst := []repo.Package{{Name: "hello", Version: "1.0", Release: "2", Arch: "x86_64"},
		{Name: "other", Epoch: 0, Version: "3.0", Release: "1", Arch: "x86_64"}} // epoch differs: no match
	got, err := repo.Resolve(context.Background(), repo.Request{MetadataDirs: []string{dir}, Installed: inst, All: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"patch-hello-1.0-2-HP001-1-1.x86_64"}; !slices.Equal(packages(got), want) {
		t.Fatalf("got %v, want %v", packages(got), want)
	}
}

func TestResolveBrokenMetadata(t *testing.T) {
	ctx := context.Background()
	corrupt := func(t *testing.T, dir, typ string, f func(path string)) {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, "repodata", "repomd.xml"))
		if err != nil {
			t.Fatal(err)
		}
		href, _, err := repo.MetaFile(raw, typ)
		if err != nil {
			t.Fatal(err)
		}
		f(filepath.Join(dir, href))
	}
	cases := []struct {
		name   string
		break_ func(t *testing.T, dir string)
	}{
		{"truncated primary", func(t *testing.T, dir string) {
			corrupt(t, dir, "primary", func(p string) { os.Truncate(p, 20) })
		}},
		{"missing updateinfo", func(t *testing.T, dir string) {
			corrupt(t, dir, "updateinfo", func(p string) { os.Remove(p) })
		}},
		{"garbage repomd", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "repodata", "repomd.xml"), []byte("<repomd><data"), 0o644)
		}},
		{"missing repomd", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "repodata", "repomd.xml"))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := publishedRepo(t)
			c.break_(t, dir)
			_, err := repo.Resolve(ctx, repo.Request{MetadataDirs: []string{dir}, Installed: host})
			if !errors.Is(err, repo.ErrMetadata) {
				t.Fatalf("error %v, want one wrapping repo.ErrMetadata", err)
			}
			t.Logf("%s: %v", c.name, err)
		})
	}
}

// recompress rewrites one metadata file of a repository with another compression and
// updates repomd.xml, as a repository tool that supports it would have written it
// (Debian's createrepo_c 0.17 cannot write zstd).
func recompress(t *testing.T, dir, typ, algo string) {
	t.Helper()
	mdPath := filepath.Join(dir, "repodata", "repomd.xml")
	raw, err := os.ReadFile(mdPath)
	if err != nil {
		t.Fatal(err)
	}
	oldHref, oldSum, err := repo.MetaFile(raw, typ)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(filepath.Join(dir, oldHref))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := repo.Decompress(old)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var w io.WriteCloser
	switch algo {
	case "zst":
		w, err = zstd.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "plain":
		w = nopWriteCloser{&buf}
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Write(plain)
	w.Close()
	sum := sha256.Sum256(buf.Bytes())
	href := fmt.Sprintf("repodata/%x-%s.xml.%s", sum, typ, algo)
	if err := os.WriteFile(filepath.Join(dir, href), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, oldHref))
	s := strings.Replace(string(raw), oldHref, href, 1)
	s = strings.Replace(s, oldSum, hex.EncodeToString(sum[:]), 1)
	if err := os.WriteFile(mdPath, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func TestResolveCompression(t *testing.T) {
	want := []string{"patch-hello-1.0-1-HP002-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}
	for _, algo := range []string{"xz", "zst", "plain"} {
		t.Run(algo, func(t *testing.T) {
			var dir string
			if algo == "xz" {
				dir = publishedRepo(t, "--general-compress-type=xz")
			} else {
				dir = publishedRepo(t)
				recompress(t, dir, "primary", algo)
			}
			recompress(t, dir, "updateinfo", algo)
			got, err := repo.Resolve(context.Background(), repo.Request{MetadataDirs: []string{dir}, Installed: host})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(packages(got), want) || got[0].Advisory != "SA-2024-0002" {
				t.Fatalf("got %+v, want %v", got, want)
			}
		})
	}
}

// TestResolveConfiguredRepos reads repositories from root/etc/yum.repos.d: one served
// over HTTP, one file://, one disabled, and the rpmdb under root.
func TestResolveConfiguredRepos(t *testing.T) {
	ctx := context.Background()
	rpms := repotest.RPMs(t)
	webDir := publishedRepo(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(webDir)))
	defer srv.Close()

	fileDir := repotest.NewRepo(t, nil)
	if _, err := publish.Add(ctx, publish.AddRequest{RepoDir: fileDir, Advisory: "SA-3", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}}); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	reposd := filepath.Join(root, "etc", "yum.repos.d")
	os.MkdirAll(reposd, 0o755)
	conf := fmt.Sprintf(`# test repositories
[web]
name=served over http
baseurl=%s/
	http://127.0.0.1:1/unused/$basearch
gpgcheck=0

[local]
name=local
baseurl=file://%s
enabled=1

[off]
baseurl=file:///nonexistent
enabled=0

[mirrors-only]
metalink=https://example.invalid/metalink
`, srv.URL, fileDir)
	if err := os.WriteFile(filepath.Join(reposd, "test.repo"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// A real rpmdb under root with hello-1.0-1 installed.
	db, err := repo.RPMDBPath(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, db), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("rpm", "--root", root, "-i", "--nodeps", "--justdb", rpms["hello-1.0-1"]).CombinedOutput(); err != nil {
		t.Fatalf("rpm -i: %v\n%s", err, out)
	}
	inst, err := repo.Installed(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(inst) != 1 || inst[0] != host[0] {
		t.Fatalf("installed %+v", inst)
	}

	got, err := repo.Resolve(ctx, repo.Request{Root: root, All: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"patch-hello-1.0-1-HP001-1-1.x86_64", "patch-hello-1.0-1-HP002-1-1.x86_64"}
	if !slices.Equal(packages(got), want) {
		t.Fatalf("got %v, want %v", packages(got), want)
	}
	// The web repository comes first in the file, so it provides HP001.
	if got[0].RepoID != "web" || got[0].Location != srv.URL+"/patch-hello-1.0-1-HP001-1-1.x86_64.rpm" || got[0].Advisory != "SA-2024-0001" {
		t.Fatalf("HP001 candidate: %+v", got[0])
	}

	// Once the patch RPM is installed, it says so.
	if out, err := exec.Command("rpm", "--root", root, "-i", "--nodeps", "--justdb", rpms["patch-hello-1.0-1-HP002-1-1"]).CombinedOutput(); err != nil {
		t.Fatalf("rpm -i: %v\n%s", err, out)
	}
	got, err = repo.Resolve(ctx, repo.Request{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].Installed || got[0].PatchName != "HP002" {
		t.Fatalf("after install: %+v", got)
	}

	// A broken root: no rpmdb.
	if _, err := repo.Resolve(ctx, repo.Request{Root: t.TempDir()}); err == nil {
		t.Fatal("resolved without an rpmdb")
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	repotest.Cleanup()
	os.Exit(code)
}
