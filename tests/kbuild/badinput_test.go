package kbuild

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/kernel/qemuboot"
)

// otherDebuginfo makes a small kernel-debuginfo RPM of another kernel build.
func otherDebuginfo(t *testing.T) string {
	top := t.TempDir()
	spec := filepath.Join(top, "kernel.spec")
	os.WriteFile(spec, []byte(`Name: kernel
Version: 6.1.1
Release: 9
Summary: another kernel build
License: GPL-2.0-only
%global debug_package %{nil}
%description
x
%package debuginfo
Summary: x
%description debuginfo
x
%install
mkdir -p %{buildroot}/usr/lib/debug/lib/modules/6.1.0-1-amd64
echo not a kernel > %{buildroot}/usr/lib/debug/lib/modules/6.1.0-1-amd64/vmlinux
%files debuginfo
/usr/lib/debug/lib/modules/6.1.0-1-amd64
`), 0o644)
	qemuboot.Run(t, top, nil, "rpmbuild", "--nodeps", "--define", "_topdir "+top, "-bb", spec)
	return filepath.Join(top, "RPMS", "x86_64", "kernel-debuginfo-6.1.1-9.x86_64.rpm")
}

// topLevel lists the entries of dir (the tree cache: one per prepared tree).
func topLevel(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func listDir(dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// TestKernelBadInputE2E: each bad input fails with its exit status and a message naming
// the cause; the output directory holds the log and nothing else, the work directory
// is gone and the tree cache gains no half-prepared tree.
func TestKernelBadInputE2E(t *testing.T) {
	needE2E(t)
	in := Prepare(t)
	bin := syscareBuild(t)
	patch := func(name string) string { p, _ := filepath.Abs("testdata/" + name + ".patch"); return p }
	cache := treeCache(in)
	os.MkdirAll(cache, 0o755)
	cases := []struct {
		name     string
		src, dbg string
		fix      string
		code     int
		want     []string
	}{
		{"no usable config", in.NoConfigSRPM, in.Debuginfo, patch("loadavg"), 1,
			[]string{"kernel configuration", "has no .config after %prep", "no --kernel-config"}},
		{"debuginfo of another kernel build", in.SRPM, otherDebuginfo(t), patch("loadavg"), 1,
			[]string{"kernel-debuginfo-6.1.1-9 is for another kernel build", "kernel-" + in.Version + "-" + in.Release + ".src.rpm"}},
		{"assembly", in.SRPM, in.Debuginfo, patch("asm"), 4,
			[]string{"assembly file", "arch/x86/lib/memcpy_64.S"}},
		{"__init code", in.SRPM, in.Debuginfo, patch("init"), 4,
			[]string{"function proc_loadavg_init, section .init.text", "__init code changed"}},
		{"fix does not apply", in.SRPM, in.Debuginfo, patch("noapply"), 1,
			[]string{"patch does not apply: noapply.patch"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			before := topLevel(cache)
			r := runBuild(t, bin, "--patch-name", "BAD", "--source", c.src, "--debuginfo", c.dbg, "--patch", c.fix, "--kernel-cache", cache)
			t.Logf("exit %d after %v:\n%s", r.code, r.took.Round(1e6), r.out)
			if r.code != c.code {
				t.Errorf("exit %d, want %d", r.code, c.code)
			}
			for _, w := range c.want {
				if !strings.Contains(r.out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			left := listDir(r.outDir)
			if len(left) != 1 || !strings.HasPrefix(left[0], "syscare-build-BAD-") || !strings.HasSuffix(left[0], ".log") {
				t.Errorf("output directory holds %v, want only the log", left)
			}
			if w := listDir(r.workBase); len(w) != 0 {
				t.Errorf("work directory left: %v", w)
			}
			// A tree prepared completely before the failure may stay (it is reused); a
			// half-prepared one must not.
			had := map[string]bool{}
			for _, e := range before {
				had[e] = true
			}
			for _, e := range topLevel(cache) {
				if !had[e] && (strings.HasPrefix(e, ".") || !exists(filepath.Join(cache, e, ".syscare-prepared"))) {
					t.Errorf("tree cache: %s left half-prepared", e)
				}
			}
		})
	}
}
