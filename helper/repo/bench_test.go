package repo

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// writeSyntheticRepo writes repodata for n hot patch packages (n/10 targets with 10
// cumulative patches each) plus n ordinary packages, with one advisory per patch. It
// writes the XML directly: building and indexing 10000 RPMs would take minutes, and the
// parser sees the same bytes createrepo_c writes.
func writeSyntheticRepo(tb testing.TB, dir string, n int) []Package {
	tb.Helper()
	var prim, ui bytes.Buffer
	fmt.Fprintf(&prim, `<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="%d">
`, 2*n)
	ui.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<updates>\n")
	var installed []Package
	for i := 0; i < n; i++ {
		t := fmt.Sprintf("pkg%d", i/10)
		if i%10 == 0 {
			installed = append(installed, Package{Name: t, Version: "1.0", Release: "1", Arch: "x86_64"})
		}
		name := fmt.Sprintf("patch-%s-1.0-1-HP%03d", t, i%10+1)
		fmt.Fprintf(&prim, `<package type="rpm"><name>%s</name><arch>x86_64</arch><version epoch="0" ver="1" rel="1"/>
<checksum type="sha256" pkgid="YES">%064d</checksum><summary>hot patch</summary><description>hot patch</description>
<packager></packager><url></url><time file="1" build="1"/><size package="7000" installed="5000" archive="5300"/>
<location href="Packages/%s-1-1.x86_64.rpm"/><format><rpm:license>MIT</rpm:license><rpm:vendor></rpm:vendor>
<rpm:group>Unspecified</rpm:group><rpm:buildhost>h</rpm:buildhost><rpm:sourcerpm>%s-1-1.src.rpm</rpm:sourcerpm>
<rpm:header-range start="4504" end="6000"/><rpm:provides><rpm:entry name="%s" flags="EQ" epoch="0" ver="1" rel="1"/>
<rpm:entry name="%s(x86-64)" flags="EQ" epoch="0" ver="1" rel="1"/></rpm:provides><rpm:requires>
<rpm:entry name="/bin/sh" pre="1"/><rpm:entry name="%s" flags="EQ" epoch="0" ver="1.0" rel="1"/><rpm:entry name="syscare"/>
</rpm:requires></format></package>
`, name, i, name, name, name, name, t)
		fmt.Fprintf(&prim, `<package type="rpm"><name>lib%d</name><arch>x86_64</arch><version epoch="0" ver="2.%d" rel="3"/>
<checksum type="sha256" pkgid="YES">%064d</checksum><summary>library</summary><description>a library</description>
<packager></packager><url></url><time file="1" build="1"/><size package="7000" installed="5000" archive="5300"/>
<location href="Packages/lib%d-2.%d-3.x86_64.rpm"/><format><rpm:license>MIT</rpm:license>
<rpm:provides><rpm:entry name="lib%d.so.1()(64bit)"/></rpm:provides><rpm:requires><rpm:entry name="libc.so.6()(64bit)"/>
</rpm:requires><file>/usr/lib64/lib%d.so.1</file></format></package>
`, i, i, i+n, i, i, i, i)
		fmt.Fprintf(&ui, `<update from="syscare" status="stable" type="security" version="1"><id>SA-%d</id>
<title>hot patch %d</title><severity>Important</severity><release>syscare</release><issued date="2024-01-01 00:00:00"/>
<references><reference href="x" id="CVE-2024-%05d" title="CVE-2024-%05d" type="cve"/></references><description>d</description>
<pkglist><collection short="s"><name>s</name><package name="%s" epoch="0" version="1" release="1" arch="x86_64">
<filename>%s-1-1.x86_64.rpm</filename></package></collection><hot_patch_collection><name>s</name>
<package name="%s" epoch="0" version="1" release="1" arch="x86_64"><filename>%s-1-1.x86_64.rpm</filename></package>
</hot_patch_collection></pkglist></update>
`, i, i, i, i, name, name, name, name)
	}
	prim.WriteString("</metadata>\n")
	ui.WriteString("</updates>\n")
	md := filepath.Join(dir, "repodata")
	if err := os.MkdirAll(md, 0o755); err != nil {
		tb.Fatal(err)
	}
	var repomd bytes.Buffer
	repomd.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<repomd xmlns=\"http://linux.duke.edu/metadata/repo\">\n")
	for _, f := range []struct {
		typ  string
		data []byte
	}{{"primary", prim.Bytes()}, {"updateinfo", ui.Bytes()}} {
		var gz bytes.Buffer
		w := gzip.NewWriter(&gz)
		w.Write(f.data)
		w.Close()
		sum := sha256.Sum256(gz.Bytes())
		href := fmt.Sprintf("repodata/%x-%s.xml.gz", sum, f.typ)
		if err := os.WriteFile(filepath.Join(dir, href), gz.Bytes(), 0o644); err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(&repomd, "<data type=%q><checksum type=\"sha256\">%x</checksum><location href=%q/></data>\n", f.typ, sum, href)
	}
	repomd.WriteString("</repomd>\n")
	if err := os.WriteFile(filepath.Join(md, "repomd.xml"), repomd.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
	return installed
}

// BenchmarkResolve5000 resolves a repository with 5000 hot patch packages (500 targets,
// 10 cumulative patches each) and 5000 other packages: the helper's share of
// `dnf hotpatch list --available`.
func BenchmarkResolve5000(b *testing.B) {
	dir := b.TempDir()
	installed := writeSyntheticRepo(b, dir, 5000)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cs, err := Resolve(ctx, Request{MetadataDirs: []string{dir}, Installed: installed, All: true})
		if err != nil {
			b.Fatal(err)
		}
		if len(cs) != 5000 {
			b.Fatalf("%d candidates, want 5000", len(cs))
		}
	}
}

func TestSyntheticRepo(t *testing.T) {
	dir := t.TempDir()
	installed := writeSyntheticRepo(t, dir, 50)
	cs, err := Resolve(context.Background(), Request{MetadataDirs: []string{dir}, Installed: installed})
	if err != nil {
		t.Fatal(err)
	}
	// Newest of 10 cumulative patches per target.
	if len(cs) != 5 || cs[0].PatchName != "HP010" || cs[0].Advisory != "SA-9" || cs[0].CVEs[0] != "CVE-2024-00009" {
		t.Fatalf("got %d candidates, first %+v", len(cs), cs[0])
	}
}
