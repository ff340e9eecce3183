package repo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/syscare/syscare/dbus"
)

var host = []Package{
	{Name: "hello", Version: "1.0", Release: "1", Arch: "x86_64"},
	{Name: "other", Epoch: 2, Version: "3.0", Release: "1", Arch: "x86_64"},
	{Name: "bash", Version: "5.2", Release: "1", Arch: "x86_64"},
}

var allPatches = []string{"patch-hello-1.0-1-HP001-1-1", "patch-hello-1.0-1-HP002-1-1",
	"patch-hello-1.0-2-HP001-1-1", "patch-other-3.0-1-HP001-1-2", "patch-notes-1-1-X-1-1", "hello-1.0-1"}

// publishedRepo is a repository with every patch fixture and two advisories.
func publishedRepo(t *testing.T, extra ...string) string {
	t.Helper()
	dir := newRepo(t, extra, allPatches...)
	rpms := fixtureRPMs(t)
	ctx := context.Background()
	for _, a := range []AddRequest{
		{Advisory: "SA-2024-0001", CVEs: []string{"CVE-2024-0001"}, Severity: "important",
			RPMs: []string{rpms["patch-hello-1.0-1-HP001-1-1"], rpms["patch-hello-1.0-2-HP001-1-1"]}},
		{Advisory: "SA-2024-0002", CVEs: []string{"CVE-2024-0002", "CVE-2024-0003"},
			RPMs: []string{rpms["patch-hello-1.0-1-HP002-1-1"]}},
		{Advisory: "BA-2024-0003", Type: "bugfix", RPMs: []string{rpms["patch-other-3.0-1-HP001-1-2"]}},
	} {
		a.RepoDir = dir
		if _, err := Add(ctx, a); err != nil {
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
		req  Request
		want []string
	}{
		{"newest per target", Request{}, []string{"patch-hello-1.0-1-HP002-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"all", Request{All: true}, []string{"patch-hello-1.0-1-HP001-1-1.x86_64", "patch-hello-1.0-1-HP002-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"by cve", Request{CVEs: []string{"cve-2024-0001"}}, []string{"patch-hello-1.0-1-HP001-1-1.x86_64"}},
		{"by second cve", Request{CVEs: []string{"CVE-2024-0003"}}, []string{"patch-hello-1.0-1-HP002-1-1.x86_64"}},
		{"by advisory", Request{Advisories: []string{"BA-2024-0003"}}, []string{"patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"cve or advisory", Request{CVEs: []string{"CVE-2024-0001"}, Advisories: []string{"BA-2024-0003"}},
			[]string{"patch-hello-1.0-1-HP001-1-1.x86_64", "patch-other-3.0-1-HP001-1-2.x86_64"}},
		{"unknown cve", Request{CVEs: []string{"CVE-1999-0001"}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.MetadataDirs = []string{dir}
			c.req.Installed = host
			got, err := Resolve(ctx, c.req)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(packages(got), c.want) {
				t.Fatalf("got %v, want %v", packages(got), c.want)
			}
		})
	}

	got, err := Resolve(ctx, Request{MetadataDirs: []string{filepath.Join(dir, "repodata")}, Installed: host, All: true})
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
	inst := []Package{{Name: "hello", Version: "1.0", Release: "2", Arch: "x86_64"},
		{Name: "other", Epoch: 0, Version: "3.0", Release: "1", Arch: "x86_64"}} // epoch differs: no match
	got, err := Resolve(context.Background(), Request{MetadataDirs: []string{dir}, Installed: inst, All: true})
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
		md, err := parseRepomd(raw)
		if err != nil {
			t.Fatal(err)
		}
		f(filepath.Join(dir, md.find(typ).Location.Href))
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
			_, err := Resolve(ctx, Request{MetadataDirs: []string{dir}, Installed: host})
			if !errors.Is(err, ErrMetadata) {
				t.Fatalf("error %v, want one wrapping ErrMetadata", err)
			}
			t.Logf("%s: %v", c.name, err)
		})
	}
}
