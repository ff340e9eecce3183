package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	"github.com/ulikunitz/xz"

	"github.com/syscare/syscare/dbus"
)

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
	md, err := parseRepomd(raw)
	if err != nil {
		t.Fatal(err)
	}
	d := md.find(typ)
	old, err := os.ReadFile(filepath.Join(dir, d.Location.Href))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := decompress(old)
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
	os.Remove(filepath.Join(dir, d.Location.Href))
	s := strings.Replace(string(raw), d.Location.Href, href, 1)
	s = strings.Replace(s, d.Checksum.Value, hex.EncodeToString(sum[:]), 1)
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
			got, err := Resolve(context.Background(), Request{MetadataDirs: []string{dir}, Installed: host})
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
	rpms := fixtureRPMs(t)
	webDir := publishedRepo(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(webDir)))
	defer srv.Close()

	fileDir := newRepo(t, nil)
	if _, err := Add(ctx, AddRequest{RepoDir: fileDir, Advisory: "SA-3", RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"]}}); err != nil {
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
	db, err := rpmDBPath(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, db), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("rpm", "--root", root, "-i", "--nodeps", "--justdb", rpms["hello-1.0-1"]).CombinedOutput(); err != nil {
		t.Fatalf("rpm -i: %v\n%s", err, out)
	}
	inst, err := Installed(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if len(inst) != 1 || inst[0] != host[0] {
		t.Fatalf("installed %+v", inst)
	}

	got, err := Resolve(ctx, Request{Root: root, All: true})
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
	got, err = Resolve(ctx, Request{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].Installed || got[0].PatchName != "HP002" {
		t.Fatalf("after install: %+v", got)
	}

	// A broken root: no rpmdb.
	if _, err := Resolve(ctx, Request{Root: t.TempDir()}); err == nil {
		t.Fatal("resolved without an rpmdb")
	}
}

func TestParseRepoFile(t *testing.T) {
	vars := map[string]string{"basearch": "x86_64", "releasever": "24.03"}
	cfgs, err := parseRepoFile(strings.NewReader(`[main]
gpgcheck=1
[a]
baseurl = http://m/$releasever/os/${basearch}/, file:///b
enabled = True
[b]
enabled=no
baseurl=http://x/
`), vars)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfgs) != 1 || cfgs[0].ID != "a" || !slices.Equal(cfgs[0].BaseURLs, []string{"http://m/24.03/os/x86_64/", "file:///b"}) {
		t.Fatalf("parsed %+v", cfgs)
	}
	for _, bad := range []string{"key=value\n", "[open\n", "[a]\nnot a pair\n"} {
		if _, err := parseRepoFile(strings.NewReader(bad), vars); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if _, err := urlSource("x", "ftp://h/p"); err == nil {
		t.Error("accepted ftp://")
	}
}

// openEulerUpdateinfo is an advisory as openEuler publishes hot patches: no epoch, only
// a hot_patch_collection.
const openEulerUpdateinfo = `<?xml version="1.0" encoding="UTF-8"?>
<updates>
  <update from="openeuler.org" type="security" status="stable">
    <id>openEuler-HotPatchSA-2023-1001</id>
    <title>An update for hello is now available</title>
    <severity>Important</severity>
    <release>openEuler</release>
    <issued date="2023-03-01"></issued>
    <references>
      <reference href="x" id="CVE-2023-1" title="CVE-2023-1" type="cve"></reference>
      <reference href="y" id="BZ-7" title="bug" type="bugzilla"></reference>
    </references>
    <description>d</description>
    <pkglist>
      <hot_patch_collection>
        <name>openEuler</name>
        <package arch="x86_64" name="patch-hello-1.0-1-HP001" release="1" version="1">
          <filename>patch-hello-1.0-1-HP001-1-1.x86_64.rpm</filename>
        </package>
      </hot_patch_collection>
    </pkglist>
  </update>
</updates>`

func TestOpenEulerUpdateinfo(t *testing.T) {
	advs, err := parseUpdateinfo(strings.NewReader(openEulerUpdateinfo))
	if err != nil {
		t.Fatal(err)
	}
	want := Package{Name: "patch-hello-1.0-1-HP001", Version: "1", Release: "1", Arch: "x86_64"}
	if len(advs) != 1 || !slices.Equal(advs[0].CVEs, []string{"CVE-2023-1"}) || !slices.Equal(advs[0].Packages, []Package{want}) {
		t.Fatalf("parsed %+v", advs)
	}
	rd := &repoData{src: &source{id: "oe", base: "/r"}, advisories: advs, patches: []*patchPackage{{
		Pkg: want, Target: host[0], PatchName: "HP001", Location: "p.rpm", RequiresSysc: true}}}
	got := resolve([]*repoData{rd}, host, Request{CVEs: []string{"CVE-2023-1"}})
	if len(got) != 1 || got[0].Advisory != "openEuler-HotPatchSA-2023-1001" || got[0].Location != "/r/p.rpm" {
		t.Fatalf("resolved %+v", got)
	}
}

func TestParseOptions(t *testing.T) {
	req, err := ParseOptions(map[string]any{syscarebus.ResolveOptMetadataDirs: []string{"/a"}, syscarebus.ResolveOptCVEs: []string{"CVE-1"},
		syscarebus.ResolveOptAdvisories: []string{"SA"}, syscarebus.ResolveOptAll: true})
	if err != nil || !req.All || req.MetadataDirs[0] != "/a" || req.CVEs[0] != "CVE-1" || req.Advisories[0] != "SA" {
		t.Fatalf("%+v %v", req, err)
	}
	for _, bad := range []map[string]any{{"cve": []string{"x"}}, {syscarebus.ResolveOptCVEs: "x"}, {syscarebus.ResolveOptAll: "yes"}} {
		if _, err := ParseOptions(bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

// FuzzMetadata: malformed metadata is an error, never a panic.
func FuzzMetadata(f *testing.F) {
	f.Add([]byte(openEulerUpdateinfo))
	f.Add([]byte(`<metadata><package><name>patch-a-1-1-X</name><version epoch="x"/><format><requires><entry name="a" flags="EQ" ver="1" rel="1" epoch="-1"/></requires></format></package></metadata>`))
	f.Add([]byte{0x1f, 0x8b, 0, 0})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3})
	f.Add([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseRepomd(b)
		if rc, err := decompress(b); err == nil {
			io.ReadAll(io.LimitReader(rc, 1<<20))
			rc.Close()
		}
		parsePrimary(bytes.NewReader(b))
		parseUpdateinfo(bytes.NewReader(b))
	})
}
