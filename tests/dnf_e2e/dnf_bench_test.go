package dnfe2e

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeBenchRepo writes repository metadata for n hot patch packages of victim-1.0-1,
// one advisory each. The XML is written directly (the same schema createrepo_c writes):
// building 5000 RPMs would take longer than the whole test budget.
func writeBenchRepo(tb testing.TB, dir string, n int) {
	tb.Helper()
	var prim, files, other, ui bytes.Buffer
	fmt.Fprintf(&prim, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata xmlns=\"http://linux.duke.edu/metadata/common\" xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\" packages=\"%d\">\n", n)
	fmt.Fprintf(&files, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<filelists xmlns=\"http://linux.duke.edu/metadata/filelists\" packages=\"%d\">\n", n)
	fmt.Fprintf(&other, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<otherdata xmlns=\"http://linux.duke.edu/metadata/other\" packages=\"%d\">\n", n)
	ui.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<updates>\n")
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("patch-victim-1.0-1-HP%04d", i+1)
		pkgid := fmt.Sprintf("%064x", i+1)
		fmt.Fprintf(&prim, `<package type="rpm"><name>%[1]s</name><arch>x86_64</arch><version epoch="0" ver="1" rel="1"/>
<checksum type="sha256" pkgid="YES">%[2]s</checksum><summary>hot patch</summary><description>hot patch</description>
<packager></packager><url></url><time file="1700000000" build="1700000000"/><size package="7000" installed="5000" archive="5300"/>
<location href="%[1]s-1-1.x86_64.rpm"/><format><rpm:license>MIT</rpm:license><rpm:vendor></rpm:vendor><rpm:group>Unspecified</rpm:group>
<rpm:buildhost>h</rpm:buildhost><rpm:sourcerpm>%[1]s-1-1.src.rpm</rpm:sourcerpm><rpm:header-range start="4504" end="6000"/>
<rpm:provides><rpm:entry name="%[1]s" flags="EQ" epoch="0" ver="1" rel="1"/></rpm:provides>
<rpm:requires><rpm:entry name="victim" flags="EQ" epoch="0" ver="1.0" rel="1"/><rpm:entry name="syscare"/></rpm:requires>
</format></package>
`, name, pkgid)
		fmt.Fprintf(&files, "<package pkgid=%q name=%q arch=\"x86_64\"><version epoch=\"0\" ver=\"1\" rel=\"1\"/><file type=\"dir\">/usr/lib/syscare/patches/%d</file></package>\n", pkgid, name, i)
		fmt.Fprintf(&other, "<package pkgid=%q name=%q arch=\"x86_64\"><version epoch=\"0\" ver=\"1\" rel=\"1\"/></package>\n", pkgid, name)
		fmt.Fprintf(&ui, `<update from="syscare" status="stable" type="security" version="1"><id>SA-B-%[1]d</id><title>t</title>
<severity>Important</severity><release>syscare</release><issued date="2024-01-01 00:00:00"/><references>
<reference href="x" id="CVE-2024-%05[1]d" title="CVE-2024-%05[1]d" type="cve"/></references><description>d</description>
<pkglist><collection short="s"><name>s</name><package name="%[2]s" epoch="0" version="1" release="1" arch="x86_64">
<filename>%[2]s-1-1.x86_64.rpm</filename></package></collection><hot_patch_collection><name>s</name>
<package name="%[2]s" epoch="0" version="1" release="1" arch="x86_64"><filename>%[2]s-1-1.x86_64.rpm</filename></package>
</hot_patch_collection></pkglist></update>
`, i, name)
	}
	prim.WriteString("</metadata>\n")
	files.WriteString("</filelists>\n")
	other.WriteString("</otherdata>\n")
	ui.WriteString("</updates>\n")
	os.MkdirAll(filepath.Join(dir, "repodata"), 0o755)
	var md bytes.Buffer
	md.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<repomd xmlns=\"http://linux.duke.edu/metadata/repo\" xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\">\n<revision>1</revision>\n")
	for _, f := range []struct {
		typ  string
		data []byte
	}{{"primary", prim.Bytes()}, {"filelists", files.Bytes()}, {"other", other.Bytes()}, {"updateinfo", ui.Bytes()}} {
		var gz bytes.Buffer
		w := gzip.NewWriter(&gz)
		w.Write(f.data)
		w.Close()
		sum, open := sha256.Sum256(gz.Bytes()), sha256.Sum256(f.data)
		href := fmt.Sprintf("repodata/%x-%s.xml.gz", sum, f.typ)
		if err := os.WriteFile(filepath.Join(dir, href), gz.Bytes(), 0o644); err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(&md, "<data type=%q><checksum type=\"sha256\">%x</checksum><open-checksum type=\"sha256\">%x</open-checksum>"+
			"<location href=%q/><timestamp>1700000000</timestamp><size>%d</size><open-size>%d</open-size></data>\n",
			f.typ, sum, open, href, gz.Len(), len(f.data))
	}
	md.WriteString("</repomd>\n")
	if err := os.WriteFile(filepath.Join(dir, "repodata", "repomd.xml"), md.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkDNFList5000 times `dnf hotpatch list --available` against a plain
// `dnf list --available` on the same 5000-patch repository, in the same run, and
// reports the ratio (the helper resolves on DNF's cached metadata).
func BenchmarkDNFList5000(b *testing.B) {
	e := setup(b)
	bench := filepath.Join(e.dir, "bench")
	writeBenchRepo(b, bench, 5000)
	e.mustDNF("-q", "install", "victim-1.0-1", "syscare")
	args := []string{"-q", "-C", "--installroot=" + e.root, "--setopt=reposdir=" + filepath.Join(e.dir, "reposd"),
		"--repofrompath=bench," + bench, "--repo=bench", "--nogpgcheck", "--releasever=1",
		"--setopt=pluginpath=" + filepath.Join(e.repoDir, "dnf-plugin"),
		"--setopt=pluginconfpath=" + filepath.Join(e.dir, "pluginconf")}
	timed := func(extra ...string) (time.Duration, string) {
		cmd := exec.Command("dnf", append(args, extra...)...)
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+e.addr)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("dnf %v: %v\n%s", extra, err, out)
		}
		return time.Since(start), string(out)
	}
	// Fill DNF's cache first, so both timings below read the same cached metadata (-C).
	mk := append([]string{"-q", "--installroot=" + e.root, "--setopt=reposdir=" + filepath.Join(e.dir, "reposd"),
		"--repofrompath=bench," + bench, "--repo=bench", "--nogpgcheck", "--releasever=1"}, "makecache")
	if out, err := exec.Command("dnf", mk...).CombinedOutput(); err != nil {
		b.Fatalf("makecache: %v\n%s", err, out)
	}
	b.ResetTimer()
	var plain, hot time.Duration
	for i := 0; i < b.N; i++ {
		d, out := timed("list", "--available")
		plain += d
		if n := strings.Count(out, "patch-victim-1.0-1-HP"); n != 5000 {
			b.Fatalf("dnf list shows %d patches, want 5000", n)
		}
		d, out = timed("hotpatch", "list", "--available")
		hot += d
		if n := strings.Count(out, "AVAILABLE"); n != 5000 {
			b.Fatalf("dnf hotpatch list shows %d patches, want 5000:\n%.2000s", n, out)
		}
	}
	b.ReportMetric(plain.Seconds()/float64(b.N), "s/dnf-list")
	b.ReportMetric(hot.Seconds()/float64(b.N), "s/hotpatch-list")
	b.ReportMetric(float64(hot)/float64(plain), "ratio")
}
