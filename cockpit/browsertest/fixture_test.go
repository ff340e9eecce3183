package browsertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/rpmbuild/builder"
	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/rpmbuild/publish"
	"github.com/syscare/syscare/rpmbuild/selfcontain"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// The host the page looks at: the demo pattern of helper/e2e, small. victim prints what
// greet returns every 5 ms; patch HP001 makes greet return 2. The package victim-1.0-1 is
// installed stripped into a scratch root (no debuginfo there), the patch directory next
// to it, and a repository publishes HP001 and a newer HP002 with one CVE each.
const victimC = `#include <stdio.h>
#include <unistd.h>
__attribute__((noipa)) int greet(void) { return 1; }
int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) { printf("%d\n", greet()); usleep(5000); }
}
`

// hostPatch is a patch directory the test installs: HP001 makes greet return 2, the
// newer HP002 (for "Upgrade all") 3.
type hostPatch struct {
	name, uuid, entity, returns string
}

var (
	hp1 = hostPatch{"HP001", "6c1f5c5e-0000-4000-8000-00000000c0c1", "6c1f5c5e-0000-4000-8000-00000000c0c2", "2"}
	hp2 = hostPatch{"HP002", "6c1f5c5e-0000-4000-8000-00000000c0c3", "6c1f5c5e-0000-4000-8000-00000000c0c4", "3"}
)

func (p hostPatch) source() string {
	return fmt.Sprintf("#include <upatch.h>\nint greet_%[1]s(void) { return %[2]s; }\nUPATCH_FUNC(greet, greet_%[1]s);\n", p.name, p.returns)
}

const victimSpec = `Name: victim
Version: 1.0
Release: 1
Summary: hot patch target of the Cockpit page test
License: MIT
AutoReq: no
%global debug_package %{nil}
%global __os_install_post %{nil}
%description
Hot patch target of the Cockpit page test.
%install
mkdir -p %{buildroot}/usr/bin
cp %{_sourcedir}/victim %{buildroot}/usr/bin/
%files
/usr/bin/victim
`

// patchRPMSpec is a patch package as the repository lists it: resolution reads only its
// name, version and Requires.
const patchRPMSpec = `Name: patch-victim-1.0-1-%s
Version: 1
Release: 1
Summary: hot patch %s for victim
License: MIT
AutoReq: no
AutoProv: no
Requires: victim = 1.0-1
Requires: syscare
%%description
Hot patch %s for victim.
%%install
mkdir -p %%{buildroot}/usr/lib/syscare/patches/%s
echo %s > %%{buildroot}/usr/lib/syscare/patches/%s/data
%%files
/usr/lib/syscare/patches/%s/data
`

// advisories the repository publishes: advisory id, CVE, patch name.
var advisories = [][3]string{{"SA-2026-0001", "CVE-2026-0001", "HP001"}, {"SA-2026-0002", "CVE-2026-0002", "HP002"}}

type host struct {
	t      *testing.T
	repo   string // the source tree
	dir    string // world-readable scratch
	bin    string
	root   string
	bus    *testbus.Bus
	report string // the report summary the page must show
}

func run(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// newHost builds the binaries, the victim package, the patch and the repository, and
// starts the private bus whose activation starts the helper on the scratch root.
func newHost(t *testing.T) *host {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir, whose parent is private: the unprivileged Cockpit session (nobody)
	// reads the package files and reaches the bus socket under this directory.
	dir, err := os.MkdirTemp("", "syscare-cockpit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	h := &host{t: t, repo: repo, dir: dir}
	h.bin = filepath.Join(h.dir, "bin")
	h.root = filepath.Join(h.dir, "root")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(run(repo, "go", "build", "-o", h.bin+"/", "./helper/cmd/syscare-helper", "./helper/cmd/syscare"))

	top := filepath.Join(h.dir, "rpm")
	src := filepath.Join(top, "SOURCES")
	must(os.MkdirAll(src, 0o755))
	must(os.WriteFile(filepath.Join(src, "victim.c"), []byte(victimC), 0o644))
	must(run(src, "gcc", "-O2", "-g", "-Wl,--build-id", "-o", "victim", "victim.c"))
	debug := filepath.Join(h.dir, "victim.debug")
	ctx := context.Background()
	must(selfcontain.SplitDebug(ctx, filepath.Join(src, "victim"), debug))
	must(os.WriteFile(filepath.Join(top, "victim.spec"), []byte(victimSpec), 0o644))
	for _, a := range advisories {
		spec := fmt.Sprintf(patchRPMSpec, a[2], a[2], a[2], a[2], a[2], a[2], a[2])
		must(os.WriteFile(filepath.Join(top, a[2]+".spec"), []byte(spec), 0o644))
	}
	for _, spec := range []string{"victim.spec", "HP001.spec", "HP002.spec"} {
		must(run(top, "rpmbuild", "-bb", "--nodeps", "--define", "_topdir "+top, filepath.Join(top, spec)))
	}
	rpms := func(glob string) string {
		m, _ := filepath.Glob(filepath.Join(top, "RPMS/*", glob))
		if len(m) != 1 {
			t.Fatalf("rpm %s: %v", glob, m)
		}
		return m[0]
	}
	must(os.MkdirAll(filepath.Join(h.root, "usr/lib/syscare/patches"), 0o755))
	must(run(h.dir, "rpm", "--root", h.root, "-i", "--nodeps", "--noscripts", rpms("victim-1.0-1*.rpm")))
	prodhost.Check(t, h.root, filepath.Join(h.root, "usr/bin/victim"))

	// The patch objects, self-contained so that they apply to the stripped file.
	for _, p := range []hostPatch{hp1, hp2} {
		must(os.WriteFile(filepath.Join(h.dir, p.name+".c"), []byte(p.source()), 0o644))
		must(run(h.dir, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", filepath.Join(repo, "runtime/include"),
			"-o", p.name+".o", p.name+".c"))
		if _, err := selfcontain.Make(ctx, filepath.Join(h.dir, p.name+".o"), debug, filepath.Join(h.dir, p.name+"-sc.o")); err != nil {
			t.Fatal(err)
		}
	}
	h.installPatch(hp1)

	// The repository, configured on the scratch root as DNF would have it.
	repoDir := filepath.Join(h.dir, "repo")
	must(os.MkdirAll(repoDir, 0o755))
	must(run(h.dir, "createrepo_c", "-q", "--no-database", repoDir))
	for _, a := range advisories {
		req := publish.AddRequest{RepoDir: repoDir, Advisory: a[0], CVEs: []string{a[1]}, Severity: "Important",
			Title: "greet returns the wrong value (" + a[2] + ")", RPMs: []string{rpms("patch-victim-1.0-1-" + a[2] + "-1-1*.rpm")}}
		if _, err := publish.Add(ctx, req); err != nil {
			t.Fatalf("publish %s: %v", a[0], err)
		}
	}
	reposd := filepath.Join(h.root, "etc/yum.repos.d")
	must(os.MkdirAll(reposd, 0o755))
	must(os.WriteFile(filepath.Join(reposd, "hotpatch.repo"), []byte("[hotpatch]\nname=hot patches\nbaseurl=file://"+repoDir+"\nenabled=1\ngpgcheck=0\n"), 0o644))

	bus, err := testbus.Start(testbus.Options{RepoDir: repo, Dir: filepath.Join(h.dir, "bus"),
		HelperExec: fmt.Sprintf("%s/syscare-helper --root %s --idle-timeout 10m", h.bin, h.root)})
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(h.dir, "bus"), 0o755)
	h.bus = bus
	t.Cleanup(func() {
		bus.Close()
		if t.Failed() {
			t.Logf("bus and helper log:\n%s", bus.Log)
		}
	})
	return h
}

// installPatch writes a patch directory (patch.json, object, builder report) into the
// root, as the patch RPM would.
func (h *host) installPatch(p hostPatch) {
	t := h.t
	obj, err := os.ReadFile(filepath.Join(h.dir, p.name+"-sc.o"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := elfsafe.Open(filepath.Join(h.root, "usr/bin/victim"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := elfsafe.BuildID(f.File)
	f.Close()
	if err != nil || id == nil {
		t.Fatalf("victim build-id: %v", err)
	}
	sum := sha256.Sum256(obj)
	meta := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: p.uuid, Name: p.name, Version: "1", Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindUser, Description: "greet returns " + p.returns, Report: builder.ReportFile,
		Target: patchmeta.Package{Name: "victim", Version: "1.0", Release: "1", Arch: "x86_64", License: "MIT"},
		Entities: []patchmeta.Entity{{UUID: p.entity, File: "victim.o", TargetPath: "/usr/bin/victim",
			BuildID: hex.EncodeToString(id), SHA256: hex.EncodeToString(sum[:]), Functions: []patchmeta.Function{{Name: "greet"}}}}}
	dir := filepath.Join(h.root, "usr/lib/syscare/patches", p.uuid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "victim.o"), obj, 0o644); err != nil {
		t.Fatal(err)
	}
	rp := diff.MergeReports("/usr/bin/victim", &diff.Report{Schema: diff.ReportSchema, Files: []string{"victim.c"},
		Changed: []diff.FuncChange{{Name: "greet", File: "victim.c", Why: diff.WhyCode}}})
	h.report = rp.Summary()
	if err := builder.WriteReportFile(filepath.Join(dir, meta.Report), []*diff.Report{rp}); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := meta.Encode(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, patchmeta.FileName), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// syscare runs the CLI as root on the private bus.
func (h *host) syscare(args ...string) string {
	h.t.Helper()
	cmd := exec.Command(filepath.Join(h.bin, "syscare"), args...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+h.bus.Addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		h.t.Fatalf("syscare %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// status returns an entity's state as the helper reports it (syscare --json status).
func (h *host) status(entity string) string {
	h.t.Helper()
	var ss []syscarebus.EntityState
	out := h.syscare("--json", "status", entity)
	if err := json.Unmarshal([]byte(out), &ss); err != nil || len(ss) != 1 {
		h.t.Fatalf("status %s: %v %s", entity, err, out)
	}
	return ss[0].Status
}

// victim is the running target process; its latest output line is kept.
type victim struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	last string
	n    int
}

func (h *host) startVictim() *victim {
	h.t.Helper()
	v := &victim{cmd: exec.Command(filepath.Join(h.root, "usr/bin/victim"))}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := v.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			v.mu.Lock()
			v.last, v.n = sc.Text(), v.n+1
			v.mu.Unlock()
		}
		io.Copy(io.Discard, out)
	}()
	h.t.Cleanup(func() { v.cmd.Process.Kill(); v.cmd.Wait() })
	v.wait(h.t, "1")
	return v
}

// wait waits until the process prints want in fresh output.
func (v *victim) wait(t *testing.T, want string) {
	t.Helper()
	v.mu.Lock()
	start := v.n
	v.mu.Unlock()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		v.mu.Lock()
		last, n := v.last, v.n
		v.mu.Unlock()
		if n > start+1 && last == want {
			return
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	t.Fatalf("pid %d prints %q, want %q", v.cmd.Process.Pid, v.last, want)
}
