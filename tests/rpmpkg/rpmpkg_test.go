// Package rpmpkg tests syscare.spec the way a distribution builds and installs it:
// `make rpm` (rpmbuild -ba from the tarballs of `make dist`, offline, %check included),
// the packages installed into a scratch root with rpm, their files and scriptlets, and
// rpmlint.
package rpmpkg

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// built is the output of one `make rpm`, shared by the tests of this package.
type built struct {
	root string            // repository root
	dir  string            // BIN of the make run
	rpms map[string]string // package name -> file (binary packages and "src")
}

func need(t *testing.T, cmds ...string) {
	for _, c := range cmds {
		_, err := exec.LookPath(c)
		testenv.Require(t, err == nil, c+" not found (tests/deps.sh installs it)")
	}
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out, 60))
	}
	return string(out)
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// buildRPMs runs `make rpm`. On a distribution with Fedora's macros rpmbuild needs
// nothing more; on Debian the test loads fedora.macros and passes --nodeps (its rpmdb is
// empty, so no BuildRequires can be met).
func buildRPMs(t *testing.T) *built {
	testenv.NeedE2E(t)
	need(t, "rpmbuild", "rpm", "make", "gcc", "git", "go")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	b := &built{root: root, dir: t.TempDir(), rpms: map[string]string{}}
	flags := ""
	if out, _ := exec.Command("rpm", "--eval", "%{?systemd_post:yes}").Output(); strings.TrimSpace(string(out)) != "yes" {
		flags = "--nodeps --load=" + filepath.Join(root, "tests/rpmpkg/fedora.macros")
	}
	run(t, root, nil, "make", "--no-print-directory", "rpm", "BIN="+b.dir, "RPMBUILD_FLAGS="+flags)
	files, _ := filepath.Glob(filepath.Join(b.dir, "rpm", "*", "*.rpm"))
	srcs, _ := filepath.Glob(filepath.Join(b.dir, "rpm", "*.src.rpm"))
	for _, f := range files {
		name := run(t, "", nil, "rpm", "-qp", "--qf", "%{NAME}", f)
		b.rpms[name] = f
	}
	if len(srcs) != 1 {
		t.Fatalf("source RPMs: %v", srcs)
	}
	b.rpms["src"] = srcs[0]
	for _, n := range []string{"syscare", "syscare-build", "python3-dnf-plugin-hotpatch", "syscare-ansible", "syscare-cockpit", "syscare-debuginfo", "src"} {
		if b.rpms[n] == "" {
			t.Fatalf("make rpm wrote no %s package (got %v)", n, b.rpms)
		}
	}
	return b
}

func TestPackage(t *testing.T) {
	b := buildRPMs(t)
	t.Run("scriptlets", func(t *testing.T) { checkScriptlets(t, b) })
	t.Run("install", func(t *testing.T) { checkInstall(t, b) })
	t.Run("rpmlint", func(t *testing.T) { checkRpmlint(t, b) })
}

// checkScriptlets: the helper's unit is handled by the systemd scriptlets (enable by
// preset on install, disable on erase), which need systemd-rpm-macros at build time.
func checkScriptlets(t *testing.T, b *built) {
	out := run(t, "", nil, "rpm", "-qp", "--scripts", b.rpms["syscare"])
	for _, s := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet"} {
		i := strings.Index(out, s)
		if i < 0 {
			t.Fatalf("no %s:\n%s", s, out)
		}
		body := out[i:]
		if j := strings.Index(body[len(s):], " scriptlet"); j >= 0 {
			body = body[:len(s)+j]
		}
		if !strings.Contains(body, "systemd") || !strings.Contains(body, "syscare-helper.service") {
			t.Errorf("%s does not handle syscare-helper.service:\n%s", s, body)
		}
	}
	// The unattended upgrade timer ships with the plugin whose command it runs.
	if plugin := run(t, "", nil, "rpm", "-qp", "--scripts", b.rpms["python3-dnf-plugin-hotpatch"]); strings.Count(plugin, "syscare-upgrade.timer") < 3 {
		t.Errorf("the plugin's scriptlets do not handle syscare-upgrade.timer on install, erase and upgrade:\n%s", plugin)
	}
	lic := run(t, "", nil, "rpm", "-qpL", b.rpms["syscare"])
	for _, l := range []string{"/LICENSE", "github.com_cilium_ebpf-LICENSE", "golang.org_x_sys-LICENSE"} {
		if !strings.Contains(lic, l) {
			t.Errorf("license files lack %s:\n%s", l, lic)
		}
	}
	src := run(t, "", nil, "rpm", "-qpl", b.rpms["src"])
	if !strings.Contains(src, "-vendor.tar.gz") {
		t.Errorf("source RPM lacks the vendor tarball:\n%s", src)
	}
}

// checkInstall installs the three packages into a scratch root with rpm (scriptlets
// run with busybox as /bin/sh; no systemctl there, so they must be no-ops that succeed),
// checks the files and that the installed programs run, then erases them again.
func checkInstall(t *testing.T, b *built) {
	need(t, "busybox", "file")
	root := t.TempDir()
	bb, _ := exec.LookPath("busybox")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/sh"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	pkgs := []string{b.rpms["syscare"], b.rpms["syscare-build"], b.rpms["python3-dnf-plugin-hotpatch"], b.rpms["syscare-ansible"], b.rpms["syscare-cockpit"]}
	run(t, "", nil, "rpm", append([]string{"--root", root, "--nodeps", "-i"}, pkgs...)...)
	py := strings.TrimSpace(run(t, "", nil, "/usr/bin/python3", "-Ic", "import sys; print('%d.%d' % sys.version_info[:2])"))
	for _, f := range []string{
		"usr/bin/syscare", "usr/bin/syscare-build", "usr/bin/upatch-manage", "usr/libexec/syscare/syscare-helper",
		"usr/lib/systemd/system/syscare-helper.service", "usr/lib/systemd/system-preset/90-syscare.preset",
		"usr/share/dbus-1/system-services/org.openeuler.SysCare1.service",
		"usr/share/dbus-1/system.d/org.openeuler.SysCare1.conf",
		"usr/share/polkit-1/actions/org.openeuler.syscare.policy",
		"usr/include/syscare/upatch.h", "usr/lib/syscare/patches", "var/lib/syscare", "etc/syscare",
		"usr/lib/python" + py + "/site-packages/dnf-plugins/hotpatch.py",
		"usr/lib/python" + py + "/site-packages/dnf-plugins/hotupdateinfo.py",
		"etc/dnf/plugins/hotpatch.conf", "usr/share/licenses/syscare/LICENSE",
		"usr/share/bash-completion/completions/syscare", "usr/share/bash-completion/completions/syscare-build",
		"usr/share/zsh/site-functions/_syscare", "usr/share/zsh/site-functions/_syscare-build",
		"usr/lib/systemd/system/syscare-upgrade.service", "usr/lib/systemd/system/syscare-upgrade.timer",
		"usr/share/ansible/collections/ansible_collections/syscare/hotpatch/plugins/modules/hotpatch.py",
		"usr/share/ansible/collections/ansible_collections/syscare/hotpatch/roles/rollout/tasks/main.yml",
		"usr/share/cockpit/syscare/manifest.json", "usr/share/cockpit/syscare/syscare.js",
	} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("installed root: %v", err)
		}
	}
	if preset, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system-preset/90-syscare.preset")); err != nil ||
		!strings.Contains(string(preset), "\nenable syscare-helper.service\n") {
		t.Errorf("the preset does not enable the helper at boot: %q %v", preset, err)
	}
	pyc, _ := filepath.Glob(filepath.Join(root, "usr/lib/python"+py, "site-packages/dnf-plugins/__pycache__/hotpatch.*.pyc"))
	if len(pyc) == 0 {
		t.Errorf("the plugin is not byte-compiled")
	}
	// The packaged programs run: PIE binaries linked against the host's libc.
	help := run(t, "", nil, filepath.Join(root, "usr/bin/syscare"), "--help")
	if !strings.Contains(help, "usage: syscare") {
		t.Errorf("packaged syscare --help: %s", help)
	}
	elf := run(t, "", nil, "file", "-L", filepath.Join(root, "usr/libexec/syscare/syscare-helper"))
	if !strings.Contains(elf, "pie executable") && !strings.Contains(elf, "shared object") {
		t.Errorf("helper is not PIE: %s", elf)
	}
	// `man syscare` from the installed root: every page is found through MANPATH and
	// formats without warnings.
	if _, err := exec.LookPath("man"); err == nil {
		for _, p := range []string{"syscare", "syscare-build", "upatch-manage", "syscare-helper", "dnf-hotpatch", "upatch"} {
			env := []string{"MANPATH=" + filepath.Join(root, "usr/share/man"), "MANWIDTH=80", "MANPAGER=cat", "PAGER=cat", "MAN_KEEP_FORMATTING=0"}
			cmd := exec.Command("man", "--warnings", p)
			cmd.Env = append(os.Environ(), env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			// man formats for a terminal even into a pipe: bold is "N\bN", drop the overstrikes
			// (justified lines may hold two spaces).
			text := overstrike.ReplaceAllString(stdout.String(), "")
			if err != nil || stderr.Len() > 0 || !regexp.MustCompile(`NAME\n\s+`+regexp.QuoteMeta(p)+`\s+- `).MatchString(text) {
				t.Errorf("man %s from the installed root: %v\nstderr: %s\n%s", p, err, stderr.String(), tail([]byte(text), 10))
			}
		}
	} else {
		testenv.Require(t, false, "man not found")
	}
	if v := run(t, "", nil, "rpm", "--root", root, "--nodeps", "-Va"); strings.TrimSpace(v) != "" {
		t.Errorf("rpm -Va in the root: %s", v)
	}
	run(t, "", nil, "rpm", "--root", root, "--nodeps", "-e", "syscare", "syscare-build", "python3-dnf-plugin-hotpatch", "syscare-ansible", "syscare-cockpit")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/syscare")); !os.IsNotExist(err) {
		t.Errorf("erase left usr/bin/syscare: %v", err)
	}
}

var overstrike = regexp.MustCompile(".\x08")

var rpmlintSummary = regexp.MustCompile(`(\d+) packages and (\d+) specfiles checked; (\d+) errors, (\d+) warnings`)

// checkRpmlint: no errors for the packages and the spec, with the distribution's
// settings that Debian's rpmlint lacks (rpmlint.toml says why each holds).
func checkRpmlint(t *testing.T, b *built) {
	need(t, "rpmlint")
	args := []string{"-c", filepath.Join(b.root, "tests/rpmpkg/rpmlint.toml")}
	// The -debuginfo package is find-debuginfo's output, not the spec's: not linted.
	linted := 0
	for name, f := range b.rpms {
		if !strings.HasSuffix(name, "-debuginfo") && !strings.HasSuffix(name, "-debugsource") {
			args = append(args, f)
			linted++
		}
	}
	args = append(args, filepath.Join(b.root, "syscare.spec"))
	cmd := exec.Command("rpmlint", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	m := rpmlintSummary.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("rpmlint: %v\n%s", err, out.String())
	}
	t.Logf("rpmlint: %s", m[0])
	if m[3] != "0" {
		t.Errorf("rpmlint reports errors:\n%s", out.String())
	}
	if m[1] != strconv.Itoa(linted) || m[2] != "1" {
		t.Errorf("rpmlint checked %s packages and %s spec files, want %d and 1", m[1], m[2], linted)
	}
}
