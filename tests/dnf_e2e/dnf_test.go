// Package dnfe2e tests `dnf hotpatch` end to end: real dnf with the plugin from the
// source tree in an installroot, a createrepo_c repository published with
// `syscare repo add`, syscare-helper activated on a private bus, and a live process
// whose behaviour the hot patches change. The installroot is a production host: the
// victim RPM ships a stripped program, no debuginfo is installed, and the patches
// carry the victim's offsets.
package dnfe2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/rpmbuild/patchrpm"
	"github.com/syscare/syscare/rpmbuild/selfcontain"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

const victimC = `#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noipa)) int greet(void) { return 1; }
__attribute__((noipa)) int world(void) { return 10; }
int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) { printf("%d %d\n", greet(), world()); usleep(5000); }
}
`

// specTmpl makes the target package and the stand-in "syscare" package of the root: the
// latter carries the real syscare CLI (static) so that a patch RPM's %preun, which runs
// chrooted in the installroot, can reach the helper, and busybox as /bin/sh. The victim
// is stripped before rpmbuild sees it (setup); %__os_install_post is emptied so that
// the package holds exactly that file.
const victimSpec = `Name: victim
Version: 1.0
Release: %s
Summary: hot patch test target
License: MIT
AutoReq: no
%%global debug_package %%{nil}
%%global __os_install_post %%{nil}
%%description
Test target.
%%install
install -D -m 0755 %%{_sourcedir}/victim %%{buildroot}/usr/bin/victim
%%files
/usr/bin/victim
`

const syscareSpec = `Name: syscare
Version: 1
Release: 1
Summary: syscare CLI for the test root
License: MIT
AutoReqProv: no
Provides: /bin/sh
%global debug_package %{nil}
%global __os_install_post %{nil}
%description
The syscare CLI and a shell, for patch RPM scriptlets in the test root.
%install
install -D -m 0755 %{_sourcedir}/syscare %{buildroot}/usr/bin/syscare
install -D -m 0755 /bin/busybox %{buildroot}/bin/sh
%files
/usr/bin/syscare
/bin/sh
`

var patchSources = map[string]string{
	"greet2": "#include <upatch.h>\nint greet_v2(void) { return 2; }\nUPATCH_FUNC(greet, greet_v2);\n",
	"greet3": "#include <upatch.h>\nint greet_v3(void) { return 3; }\nUPATCH_FUNC(greet, greet_v3);\n",
}

type env struct {
	t       testing.TB
	repoDir string // source tree
	dir     string
	bin     string
	top     string // rpmbuild topdir
	repo    string // the published repository
	root    string // installroot
	addr    string
	bus     *testbus.Bus
	victim  *victim
	buildID string
	debug   string // the victim's debug copy (never in the root)
}

func run(t testing.TB, dir string, extraEnv []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func setup(t testing.TB) *env {
	for _, tool := range []string{"dnf", "rpmbuild", "createrepo_c", "modifyrepo_c", "dbus-daemon", "gcc", "/usr/bin/python3", "/bin/busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is a test dependency (tests/deps.sh): %v", tool, err)
		}
	}
	e := &env{t: t}
	var err error
	if e.repoDir, err = filepath.Abs("../.."); err != nil {
		t.Fatal(err)
	}
	e.dir = t.TempDir()
	e.bin = filepath.Join(e.dir, "bin")
	e.top = filepath.Join(e.dir, "rpm")
	e.repo = filepath.Join(e.dir, "repo")
	e.root = filepath.Join(e.dir, "root")
	src := filepath.Join(e.top, "SOURCES")
	for _, d := range []string{e.bin, src, e.repo, e.root, filepath.Join(e.dir, "reposd"), filepath.Join(e.dir, "pluginconf")} {
		os.MkdirAll(d, 0o755)
	}
	// The CLI that goes into the root must run there without a libc: build it static.
	run(t, e.repoDir, nil, "go", "build", "-o", e.bin+"/", "./helper/cmd/syscare-helper")
	run(t, e.repoDir, []string{"CGO_ENABLED=0"}, "go", "build", "-o", e.bin+"/", "./helper/cmd/syscare")
	os.WriteFile(filepath.Join(src, "victim.c"), []byte(victimC), 0o644)
	run(t, src, nil, "gcc", "-O2", "-g", "-Wl,--build-id", "-o", "victim", "victim.c")
	// As an RPM build does: the package ships the stripped program, its debug copy
	// stays with the builder, outside the installroot, for the patches to be resolved.
	e.debug = filepath.Join(e.dir, "victim.debug")
	if err := selfcontain.SplitDebug(context.Background(), filepath.Join(src, "victim"), e.debug); err != nil {
		t.Fatal(err)
	}
	f, err := elfsafe.Open(filepath.Join(src, "victim"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := elfsafe.BuildID(f.File)
	f.Close()
	if err != nil || id == nil {
		t.Fatalf("victim build-id: %v", err)
	}
	e.buildID = hex.EncodeToString(id)
	run(t, src, nil, "cp", filepath.Join(e.bin, "syscare"), "syscare")
	for _, rel := range []string{"1", "2"} {
		spec := filepath.Join(e.top, "victim-"+rel+".spec")
		os.WriteFile(spec, []byte(fmt.Sprintf(victimSpec, rel)), 0o644)
		run(t, e.top, nil, "rpmbuild", "-bb", "--nodeps", "--quiet", "--define", "_topdir "+e.top, spec)
	}
	os.WriteFile(filepath.Join(e.top, "syscare.spec"), []byte(syscareSpec), 0o644)
	run(t, e.top, nil, "rpmbuild", "-bb", "--nodeps", "--quiet", "--define", "_topdir "+e.top, filepath.Join(e.top, "syscare.spec"))
	rpms, _ := filepath.Glob(filepath.Join(e.top, "RPMS", "*", "*.rpm"))
	for _, r := range rpms {
		run(t, e.dir, nil, "cp", r, e.repo)
	}
	run(t, e.dir, nil, "createrepo_c", "-q", e.repo)

	// The private bus listens on an abstract socket: the same address works outside and
	// inside the installroot, where the patch RPMs' scriptlets run chrooted.
	e.addr = "unix:abstract=/syscare-dnf-test-" + newUUID()
	bus, err := testbus.Start(testbus.Options{RepoDir: e.repoDir, Dir: e.dir, Listen: e.addr,
		HelperExec: fmt.Sprintf("%s/syscare-helper --root %s --idle-timeout 120s --log-level debug", e.bin, e.root)})
	if err != nil {
		t.Fatal(err)
	}
	e.bus = bus
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if e.victim != nil {
		e.victim.stop()
	}
	e.bus.Close()
	if e.t.Failed() {
		e.t.Logf("bus and helper log:\n%s", e.bus.Log)
	}
}

// buildPatch writes a real patch RPM (the builder's spec template) for victim-1.0-1
// from one of patchSources; a wrong build-id makes a patch that fails to activate.
func (e *env) buildPatch(name, object string, wrongBuildID bool) string {
	e.t.Helper()
	work := filepath.Join(e.dir, "patch-"+name)
	os.MkdirAll(work, 0o755)
	c := filepath.Join(work, object+".c")
	os.WriteFile(c, []byte(patchSources[object]), 0o644)
	hand, obj := filepath.Join(work, object+".o"), filepath.Join(work, "victim.o")
	run(e.t, work, nil, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections",
		"-I", filepath.Join(e.repoDir, "runtime/include"), "-o", hand, c)
	// The patch carries the offsets of what it uses in the stripped victim.
	if _, err := selfcontain.Make(context.Background(), hand, e.debug, obj); err != nil {
		e.t.Fatalf("patch %s: %v", name, err)
	}
	data, _ := os.ReadFile(obj)
	sum := sha256.Sum256(data)
	bid := e.buildID
	if wrongBuildID {
		bid = strings.Repeat("ab", 20)
	}
	meta := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: newUUID(), Name: name, Version: "1", Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindUser, Description: "test patch " + name,
		Target: patchmeta.Package{Name: "victim", Version: "1.0", Release: "1", Arch: "x86_64", License: "MIT"},
		Entities: []patchmeta.Entity{{UUID: newUUID(), File: "victim.o", TargetPath: "/usr/bin/victim",
			BuildID: bid, SHA256: hex.EncodeToString(sum[:]), Functions: []patchmeta.Function{{Name: "greet"}}}}}
	var log bytes.Buffer
	out, err := patchrpm.Build(context.Background(), filepath.Join(work, "top"), patchrpm.Input{Patch: meta, Payload: []string{obj}}, &log)
	if err != nil {
		e.t.Fatalf("patch rpm %s: %v\n%s", name, err, log.String())
	}
	return out.RPM
}

// syscare runs the syscare CLI (publishing needs no bus).
func (e *env) syscare(args ...string) string {
	e.t.Helper()
	return run(e.t, e.dir, nil, filepath.Join(e.bin, "syscare"), args...)
}

// dnf runs dnf on the installroot with the plugin from the source tree; it returns
// stdout, stderr and the exit status.
func (e *env) dnf(args ...string) (string, string, int) {
	e.t.Helper()
	base := []string{"-y", "--installroot=" + e.root, "--setopt=reposdir=" + filepath.Join(e.dir, "reposd"),
		"--repofrompath=local," + e.repo, "--nogpgcheck", "--setopt=install_weak_deps=False",
		// metadata_expire=0 leaves a cache written in the same second unexpired (DNF
		// compares the age with ">"), and a repository published in that second goes
		// unseen; --refresh expires the cache outright.
		"--setopt=metadata_expire=0", "--refresh", "--releasever=1",
		"--setopt=pluginpath=" + filepath.Join(e.repoDir, "dnf-plugin"),
		"--setopt=pluginconfpath=" + filepath.Join(e.dir, "pluginconf")}
	cmd := exec.Command("dnf", append(base, args...)...)
	cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+e.addr)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("dnf: %v", err)
	}
	if strings.Contains(stdout.String()+stderr.String(), "Failed loading plugin") {
		e.t.Fatalf("dnf could not load the plugin:\n%s%s", stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String(), code
}

func (e *env) mustDNF(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.dnf(args...)
	if code != 0 {
		e.t.Fatalf("dnf %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

type row struct {
	Advisory string   `json:"advisory"`
	CVEs     []string `json:"cves"`
	Patch    string   `json:"patch"`
	Target   string   `json:"target"`
	State    string   `json:"state"`
}

// list returns `dnf hotpatch list` rows, patch RPM name -> state.
func (e *env) list(args ...string) map[string]row {
	e.t.Helper()
	out := e.mustDNF(append([]string{"-q", "hotpatch", "list", "--json"}, args...)...)
	var rows []row
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &rows); err != nil {
		e.t.Fatalf("list output: %v\n%s", err, out)
	}
	m := map[string]row{}
	for _, r := range rows {
		m[r.Patch] = r
	}
	return m
}

func (e *env) installed(name string) bool {
	return exec.Command("rpm", "--root", e.root, "-q", name).Run() == nil
}

// helperCalls returns the bus methods the helper served since the log had since bytes,
// in order (the helper logs each call at debug level).
func (e *env) helperCalls(since int) []string {
	var out []string
	for _, line := range strings.Split(e.bus.Log.String()[since:], "\n") {
		if !strings.Contains(line, "msg=call ") {
			continue
		}
		if _, m, ok := strings.Cut(line, "method="); ok {
			out = append(out, strings.Fields(m)[0])
		}
	}
	return out
}

// changing keeps the calls that change the system.
func changing(calls []string) []string {
	var out []string
	for _, c := range calls {
		switch c {
		case "List", "Status", "Info", "Target", "Check", "ProcessStatus", "Resolve":
		default:
			out = append(out, c)
		}
	}
	return out
}

// victim is the live target process; its latest output line is kept.
type victim struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	last string
	n    int
}

func (e *env) startVictim() {
	v := &victim{cmd: exec.Command(filepath.Join(e.root, "usr/bin/victim"))}
	out, _ := v.cmd.StdoutPipe()
	if err := v.cmd.Start(); err != nil {
		e.t.Fatal(err)
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
	e.victim = v
	e.waitOutput("1 10")
}

func (v *victim) stop() {
	v.cmd.Process.Kill()
	v.cmd.Wait()
}

// waitOutput waits until the victim prints want in fresh output.
func (e *env) waitOutput(want string) {
	e.t.Helper()
	v := e.victim
	v.mu.Lock()
	start := v.n
	v.mu.Unlock()
	var last string
	// A hang guard: the victim prints every few ms, a loaded machine stretches that.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		v.mu.Lock()
		var n int
		last, n = v.last, v.n // the last line, for the failure message
		v.mu.Unlock()
		if n > start+1 && last == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("victim prints %q, want %q", last, want)
}

func TestDNFHotpatch(t *testing.T) {
	e := setup(t)
	hp1 := e.buildPatch("HP001", "greet2", false)
	hp2 := e.buildPatch("HP002", "greet3", false)
	bad := e.buildPatch("HP009", "greet3", true)

	// Publishing: two advisories, and re-publishing is a no-op.
	e.syscare("repo", "add", e.repo, hp1, "--advisory", "SA-2024-0001", "--cve", "CVE-2024-0001", "--severity", "Important")
	e.syscare("repo", "add", e.repo, hp2, "--advisory", "SA-2024-0002", "--cve", "CVE-2024-0002")
	if out := e.syscare("repo", "add", e.repo, hp2, "--advisory", "SA-2024-0002", "--cve", "CVE-2024-0002"); !strings.Contains(out, "nothing to do") {
		t.Fatalf("re-publishing: %s", out)
	}

	e.mustDNF("-q", "install", "victim-1.0-1", "syscare")
	prodhost.Check(e.t, e.root, filepath.Join(e.root, "usr/bin/victim"))
	e.startVictim()

	// Everything the repository offers for victim-1.0-1, nothing for 1.0-2.
	rows := e.list("--available")
	if len(rows) != 2 || rows["patch-victim-1.0-1-HP001"].State != "AVAILABLE" ||
		rows["patch-victim-1.0-1-HP002"].Advisory != "SA-2024-0002" {
		t.Fatalf("list --available: %+v", rows)
	}

	t.Run("install by CVE", func(t *testing.T) {
		e.t = t
		since := len(e.bus.Log.String())
		e.mustDNF("hotpatch", "install", "--cve", "CVE-2024-0001")
		e.waitOutput("2 10")
		if calls := changing(e.helperCalls(since)); !slices.Equal(calls, []string{"Upgrade"}) {
			t.Errorf("install changed the system with %v, want one Upgrade call", calls)
		}
		if !e.installed("patch-victim-1.0-1-HP001") || e.installed("patch-victim-1.0-1-HP002") {
			t.Fatal("install --cve installed the wrong packages")
		}
		rows := e.list("--installed")
		if rows["patch-victim-1.0-1-HP001"].State != "ACTIVED" || len(rows) != 1 {
			t.Fatalf("list --installed: %+v", rows)
		}
	})

	t.Run("upgrade supersedes with the cumulative patch", func(t *testing.T) {
		e.t = t
		since := len(e.bus.Log.String())
		out := e.mustDNF("hotpatch", "upgrade")
		e.waitOutput("3 10")
		// The policy is the helper's: the plugin reads, then changes the system with one
		// Upgrade call and nothing else.
		calls := e.helperCalls(since)
		if !slices.Equal(changing(calls), []string{"Upgrade"}) {
			t.Errorf("the plugin changed the system with %v, want one Upgrade call (all calls: %v)", changing(calls), calls)
		}
		t.Logf("bus calls of dnf hotpatch upgrade: %v", calls)
		if !strings.Contains(out, "SUPERSEDED") {
			t.Errorf("summary does not say HP001 was superseded:\n%s", out)
		}
		rows := e.list()
		if rows["patch-victim-1.0-1-HP002"].State != "ACTIVED" || rows["patch-victim-1.0-1-HP001"].State != "NOT-APPLIED" {
			t.Fatalf("list: %+v", rows)
		}
		// Nothing more to do: a second upgrade changes nothing.
		since = len(e.bus.Log.String())
		e.mustDNF("hotupgrade")
		e.waitOutput("3 10")
		if calls := changing(e.helperCalls(since)); len(calls) != 0 {
			t.Errorf("an upgrade with nothing to do called %v", calls)
		}
	})

	t.Run("failing activation is rolled back", func(t *testing.T) {
		e.t = t
		e.syscare("repo", "add", e.repo, bad, "--advisory", "SA-2024-0009", "--cve", "CVE-2024-0009")
		since := len(e.bus.Log.String())
		out, errOut, code := e.dnf("--refresh", "hotpatch", "install", "--advisory", "SA-2024-0009")
		if code == 0 {
			t.Fatalf("install of a patch for another build succeeded:\n%s%s", out, errOut)
		}
		// One Upgrade call, which the helper rolled back; the Remove is the %preun of the
		// patch RPM DNF erased afterwards (syscare remove), not the plugin.
		if calls := changing(e.helperCalls(since)); !slices.Equal(calls, []string{"Upgrade", "Remove"}) {
			t.Errorf("the failed install changed the system with %v, want Upgrade, then the erased RPM's Remove", calls)
		}
		if !strings.Contains(out+errOut, "state restored") {
			caches, _ := filepath.Glob(filepath.Join(e.root, "var/cache/dnf/*/repodata"))
			t.Errorf("no rollback message:\n%s%s\nresolve of the repository:\n%s\nof dnf's cache %v:\n%s", out, errOut,
				e.syscare("repo", "resolve", "--root", e.root, "--metadata", e.repo, "--all"), caches,
				e.syscare("repo", "resolve", "--root", e.root, "--metadata", caches[0], "--all"))
		}
		e.waitOutput("3 10")
		if e.installed("patch-victim-1.0-1-HP009") {
			t.Fatal("the failed patch's RPM stays installed")
		}
		if rows := e.list("--installed"); rows["patch-victim-1.0-1-HP002"].State != "ACTIVED" {
			t.Fatalf("state not restored: %+v", rows)
		}
	})

	t.Run("remove erases the RPM", func(t *testing.T) {
		e.t = t
		e.mustDNF("hotpatch", "remove", "patch-victim-1.0-1-HP002")
		e.waitOutput("1 10")
		if e.installed("patch-victim-1.0-1-HP002") {
			t.Fatal("remove left the RPM installed")
		}
	})

	t.Run("openEuler spellings", func(t *testing.T) {
		e.t = t
		e.mustDNF("hotpatch", "--apply", "patch-victim-1.0-1-HP001")
		e.waitOutput("2 10")
		e.mustDNF("hotpatch", "--deactive", "patch-victim-1.0-1-HP001")
		e.waitOutput("1 10")
		e.mustDNF("hotpatch", "--active", "patch-victim-1.0-1-HP001")
		e.waitOutput("2 10")
		e.mustDNF("hotpatch", "--accept", "patch-victim-1.0-1-HP001")
		if out := e.mustDNF("-q", "hotpatch", "--list"); !strings.Contains(out, "ACCEPTED") {
			t.Fatalf("--list:\n%s", out)
		}
	})

	t.Run("broken metadata is a clear error", func(t *testing.T) {
		e.t = t
		conn, err := syscarebus.Connect(e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		broken := filepath.Join(e.dir, "broken")
		run(t, e.dir, nil, "cp", "-r", e.repo, broken)
		prim, _ := filepath.Glob(filepath.Join(broken, "repodata", "*-primary.xml.gz"))
		os.WriteFile(prim[0], []byte("not gzip"), 0o644)
		for dir, want := range map[string]string{broken: "checksum mismatch", e.dir: "no repodata/repomd.xml"} {
			_, err := conn.Resolve(context.Background(), map[string]godbus.Variant{"metadata_dirs": godbus.MakeVariant([]string{dir})})
			if err == nil || !strings.Contains(syscarebus.ErrorMessage(err), want) {
				t.Errorf("resolve %s: error %v, want one saying %q", dir, err, want)
			}
		}
	})
}
