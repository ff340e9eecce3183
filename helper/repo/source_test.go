package repo

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/syscare/syscare/dbus"
)

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
