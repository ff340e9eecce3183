// The fleet test: ansible-core (Debian's) runs the collection's rollout playbook against
// three hosts. Each host is a root of its own with the target package installed, a
// private D-Bus whose activation starts syscare-helper on that root, and a running
// target process; Ansible reaches them over local connections with per-host variables
// (the bus address, the host's health check).
package fleettest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/rpmbuild/selfcontain"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv"
)

const victimC = `#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noipa)) int greet(void) { return 1; }
__attribute__((noipa)) int world(void) { return 10; }
int main(int argc, char **argv) {
	if (argc > 1 && !strcmp(argv[1], "host")) { puts(HOST); return 0; }
	if (argc > 1 && !strcmp(argv[1], "once")) { printf("%d %d\n", greet(), world()); return 0; }
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) { printf("%d %d\n", greet(), world()); usleep(5000); }
}
`

const victimSpec = `Name: victim
Version: 1.0
Release: 1
Summary: fleet test target
License: MIT
AutoReq: no
%%global debug_package %%{nil}
%%global __os_install_post %%{nil}
%%description
Fleet test target.
%%install
install -D -m 0755 %s %%{buildroot}/usr/bin/victim
%%files
/usr/bin/victim
`

var patches = []struct{ uuid, entity, name, source string }{
	{"aaaaaaaa-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-0000000000e1", "HP001",
		"#include <upatch.h>\nint greet_v2(void) { return 2; }\nUPATCH_FUNC(greet, greet_v2);\n"},
	{"aaaaaaaa-0000-4000-8000-000000000002", "aaaaaaaa-0000-4000-8000-0000000000e2", "HP002",
		"#include <upatch.h>\nint greet_v3(void) { return 3; }\nUPATCH_FUNC(greet, greet_v3);\n"},
}

func sh(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// host is one managed host: a root, a bus, a running victim.
type host struct {
	name, root, addr string
	bus              *testbus.Bus
	cmd              *exec.Cmd
	mu               sync.Mutex
	last             string
	n                int
}

func (h *host) output() (string, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last, h.n
}

// waitOutput waits until the host's victim prints want in fresh output.
func (h *host) waitOutput(t *testing.T, want string) {
	t.Helper()
	_, start := h.output()
	// A hang guard: the victim prints every few ms, a loaded machine stretches that.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if last, n := h.output(); n > start+1 && last == want {
			return
		}
	}
	last, _ := h.output()
	t.Fatalf("host %s: victim prints %q, want %q\nhelper log:\n%s", h.name, last, want, h.bus.Log)
}

type fleet struct {
	repo, dir, bin, collections string
	hosts                       []*host
}

func setup(t *testing.T) *fleet {
	testenv.NeedRoot(t, "hot patching processes needs ptrace")
	for _, tool := range []string{"ansible-playbook", "rpmbuild", "dbus-daemon", "gcc", "/usr/bin/python3"} {
		_, err := exec.LookPath(tool)
		testenv.Require(t, err == nil, tool+" (tests/deps.sh installs it)")
	}
	f := &fleet{dir: t.TempDir()}
	os.Chmod(f.dir, 0o755)
	var err error
	if f.repo, err = filepath.Abs("../.."); err != nil {
		t.Fatal(err)
	}
	f.bin = filepath.Join(f.dir, "bin")
	sh(t, f.repo, nil, "go", "build", "-o", f.bin+"/", "./helper/cmd/syscare-helper", "./helper/cmd/syscare")

	// Ansible finds the collection as syscare.hotpatch: the repository's ansible/.
	f.collections = filepath.Join(f.dir, "collections")
	os.MkdirAll(filepath.Join(f.collections, "ansible_collections/syscare"), 0o755)
	if err := os.Symlink(filepath.Join(f.repo, "ansible"), filepath.Join(f.collections, "ansible_collections/syscare/hotpatch")); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"a", "b", "c"} {
		h := &host{name: name, root: filepath.Join(f.dir, "host-"+name)}
		os.MkdirAll(filepath.Join(h.root, "usr/lib/syscare/patches"), 0o755)
		rpm, buildID, objects := f.build(t, name)
		sh(t, f.dir, nil, "rpm", "--root", h.root, "-i", "--nodeps", "--noscripts", rpm)
		// The patch RPMs are installed on every host (a dnf task would do it): their
		// directories are there, nothing is applied.
		for _, p := range patches {
			install(t, h.root, p.uuid, p.entity, p.name, buildID, objects[p.name])
		}
		busDir := filepath.Join(f.dir, "bus-"+name)
		os.MkdirAll(busDir, 0o755)
		bus, err := testbus.Start(testbus.Options{RepoDir: f.repo, Dir: busDir,
			HelperExec: fmt.Sprintf("%s/syscare-helper --root %s --idle-timeout 120s --log-level debug", f.bin, h.root)})
		if err != nil {
			t.Fatal(err)
		}
		h.bus, h.addr = bus, bus.Addr
		t.Cleanup(bus.Close)
		h.cmd = exec.Command(filepath.Join(h.root, "usr/bin/victim"))
		out, _ := h.cmd.StdoutPipe()
		if err := h.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				h.mu.Lock()
				h.last, h.n = sc.Text(), h.n+1
				h.mu.Unlock()
			}
			io.Copy(io.Discard, out)
		}()
		t.Cleanup(func() { h.cmd.Process.Kill(); h.cmd.Wait() })
		h.waitOutput(t, "1 10")
		f.hosts = append(f.hosts, h)
	}
	return f
}

// build makes the target package of one host and the patches for it. Every host gets a
// binary of its own (another GNU build-id): the helper patches every process running a
// copy of its target's build, so hosts sharing one machine must not share a build.
// The RPM ships the stripped program; its debug copy stays here, where the patches are
// made self-contained (the hosts have no debuginfo).
func (f *fleet) build(t *testing.T, name string) (rpm, buildID string, objects map[string][]byte) {
	src := filepath.Join(f.dir, "src-"+name)
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "victim.c"), []byte(victimC), 0o644)
	sh(t, src, nil, "gcc", "-O2", "-g", "-Wl,--build-id", `-DHOST="`+name+`"`, "-o", "victim", "victim.c")
	debug := filepath.Join(src, "victim.debug")
	if err := selfcontain.SplitDebug(context.Background(), filepath.Join(src, "victim"), debug); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(src, "rpm")
	os.MkdirAll(top, 0o755)
	os.WriteFile(filepath.Join(top, "victim.spec"), []byte(fmt.Sprintf(victimSpec, filepath.Join(src, "victim"))), 0o644)
	sh(t, top, nil, "rpmbuild", "-bb", "--nodeps", "--quiet", "--define", "_topdir "+top, filepath.Join(top, "victim.spec"))
	rpms, _ := filepath.Glob(filepath.Join(top, "RPMS/*/victim-1.0-1*.rpm"))
	if len(rpms) != 1 {
		t.Fatalf("victim rpm: %v", rpms)
	}
	fe, err := elfsafe.Open(filepath.Join(src, "victim"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := elfsafe.BuildID(fe.File)
	fe.Close()
	if err != nil {
		t.Fatal(err)
	}
	objects = map[string][]byte{}
	for _, p := range patches {
		c := filepath.Join(src, p.name+".c")
		os.WriteFile(c, []byte(p.source), 0o644)
		sh(t, src, nil, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", filepath.Join(f.repo, "runtime/include"), "-o", p.name+".o", c)
		sc := filepath.Join(src, p.name+"-sc.o")
		if _, err := selfcontain.Make(context.Background(), filepath.Join(src, p.name+".o"), debug, sc); err != nil {
			t.Fatal(err)
		}
		objects[p.name], _ = os.ReadFile(sc)
	}
	return rpms[0], hex.EncodeToString(id), objects
}

// install writes a patch directory as the patch RPM would.
func install(t *testing.T, root, uuid, entity, name, buildID string, obj []byte) {
	sum := sha256.Sum256(obj)
	meta := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: uuid, Name: name, Version: "1", Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindUser, Description: "fleet test patch " + name,
		Target: patchmeta.Package{Name: "victim", Version: "1.0", Release: "1", Arch: "x86_64", License: "MIT"},
		Entities: []patchmeta.Entity{{UUID: entity, File: "victim.o", TargetPath: "/usr/bin/victim", BuildID: buildID,
			SHA256: hex.EncodeToString(sum[:]), Functions: []patchmeta.Function{{Name: "greet"}}}}}
	dir := filepath.Join(root, "usr/lib/syscare/patches", uuid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "victim.o"), obj, 0o644)
	pf, err := os.Create(filepath.Join(dir, patchmeta.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if err := meta.Encode(pf); err != nil {
		t.Fatal(err)
	}
}

// inventory writes an inventory of the hosts in the order given. Each host's health
// check runs the target program as a new process (patched by the helper during the
// soak) and looks at the service's own marker: on host c the service is unhealthy.
func (f *fleet) inventory(t *testing.T, file string, order ...*host) string {
	hosts := map[string]any{}
	for _, h := range order {
		check := fmt.Sprintf(`sh -c 'out=$(%s once); echo "victim: $out"; test -e %s/run/healthy || { echo "service on %s: not healthy"; exit 1; }'`,
			filepath.Join(h.root, "usr/bin/victim"), h.root, h.name)
		hosts[h.name] = map[string]any{"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
			"hotpatch_bus": h.addr, "hotpatch_syscare": filepath.Join(f.bin, "syscare"), "hotpatch_health": []string{check}}
		if h.name != "c" {
			os.MkdirAll(filepath.Join(h.root, "run"), 0o755)
			os.WriteFile(filepath.Join(h.root, "run/healthy"), nil, 0o644)
		}
	}
	// YAML keeps the hosts in the order written: JSON is YAML.
	var b strings.Builder
	b.WriteString(`{"all": {"hosts": {`)
	for i, h := range order {
		v, _ := json.Marshal(hosts[h.name])
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q: %s", h.name, v)
	}
	b.WriteString("}}}\n")
	p := filepath.Join(f.dir, file)
	os.WriteFile(p, []byte(b.String()), 0o644)
	return p
}

// playbook runs the collection's rollout playbook and returns its output, its exit
// status and the recap per host.
func (f *fleet) playbook(t *testing.T, inventory string, extra map[string]any, flags ...string) (string, int, map[string]map[string]int) {
	t.Helper()
	ev, _ := json.Marshal(extra)
	args := append([]string{"-i", inventory, "-e", string(ev)}, flags...)
	cmd := exec.Command("ansible-playbook", append(args, filepath.Join(f.repo, "ansible/playbooks/rollout.yml"))...)
	home := filepath.Join(f.dir, "home")
	os.MkdirAll(home, 0o755)
	cmd.Env = append(os.Environ(), "HOME="+home, "ANSIBLE_COLLECTIONS_PATH="+f.collections, "ANSIBLE_NOCOLOR=1",
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(home, "tmp"), "ANSIBLE_REMOTE_TEMP="+filepath.Join(home, "rtmp"),
		"ANSIBLE_RETRY_FILES_ENABLED=0", "ANSIBLE_FORCE_COLOR=0", "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3")
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	recap := map[string]map[string]int{}
	re := regexp.MustCompile(`(?m)^(\w+)\s+:\s+(.*)$`)
	for _, m := range re.FindAllStringSubmatch(string(out)[strings.LastIndex(string(out), "PLAY RECAP"):], -1) {
		recap[m[1]] = map[string]int{}
		for _, kv := range strings.Fields(m[2]) {
			k, v, _ := strings.Cut(kv, "=")
			var n int
			fmt.Sscan(v, &n)
			recap[m[1]][k] = n
		}
	}
	return string(out), code, recap
}

func (f *fleet) states(t *testing.T, h *host) map[string]string {
	t.Helper()
	var rows []struct{ Name, Status string }
	out := sh(t, f.dir, nil, filepath.Join(f.bin, "syscare"), "--bus", h.addr, "--json", "list")
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, r := range rows {
		m[strings.Split(r.Name, "/")[1]] = r.Status
	}
	return m
}

// TestRollout: three hosts upgraded in batches (a, then b and c), the host whose health
// check fails (c) rolled back by its helper and reported, the two healthy ones
// ACCEPTED; the second run changes nothing; check mode changes nothing and shows the
// diff; a rollout whose first batch fails stops there and leaves the other hosts alone.
func TestRollout(t *testing.T) {
	f := setup(t)
	a, b, c := f.hosts[0], f.hosts[1], f.hosts[2]
	inv := f.inventory(t, "hosts.json", a, b, c)
	vars := map[string]any{"hotpatch_patches": []string{"victim-1.0-1/HP001"}, "hotpatch_soak": "1s", "hotpatch_interval": "250ms",
		"rollout_serial": []any{1, 2}, "rollout_max_fail_percentage": 50}

	// Check mode first: what would change, nothing changed.
	out, code, recap := f.playbookCheck(t, inv, vars)
	if code != 0 || recap["a"]["changed"] != 1 || !strings.Contains(out, "+victim-1.0-1/HP001-1-1/victim: ACCEPTED") {
		t.Fatalf("check mode: exit %d, recap %v\n%s", code, recap, out)
	}
	for _, h := range f.hosts {
		if st := f.states(t, h)["HP001-1-1"]; st != "NOT-APPLIED" {
			t.Fatalf("check mode changed host %s: HP001 %s", h.name, st)
		}
	}

	start := time.Now()
	out, code, recap = f.playbook(t, inv, vars)
	t.Logf("first run took %s", time.Since(start))
	if code != 2 || strings.Count(out, "PLAY [Roll hot patches out in batches]") != 2 {
		t.Fatalf("first run: exit %d, want 2 (a failed host) in 2 batches\n%s", code, out)
	}
	for _, h := range []*host{a, b} {
		if r := recap[h.name]; r["changed"] != 1 || r["failed"] != 0 {
			t.Errorf("first run, host %s: recap %v", h.name, r)
		}
		if st := f.states(t, h)["HP001-1-1"]; st != "ACCEPTED" {
			t.Errorf("host %s: HP001 %s, want ACCEPTED", h.name, st)
		}
		h.waitOutput(t, "2 10")
	}
	if r := recap["c"]; r["failed"] != 1 || r["changed"] != 0 || r["rescued"] != 1 {
		t.Errorf("first run, host c: recap %v", r)
	}
	if !strings.Contains(out, "hot patch rollout failed on c and was rolled back (by the helper)") ||
		!strings.Contains(out, "service on c: not healthy") || !strings.Contains(out, "health check failed") {
		t.Errorf("the failed host is not reported with its check:\n%s", out)
	}
	if st := f.states(t, c)["HP001-1-1"]; st != "NOT-APPLIED" {
		t.Errorf("host c: HP001 %s after the failed check, want NOT-APPLIED", st)
	}
	c.waitOutput(t, "1 10")
	if t.Failed() {
		t.FailNow()
	}

	out, _, recap = f.playbook(t, inv, vars)
	for _, h := range f.hosts {
		if recap[h.name]["changed"] != 0 {
			t.Errorf("second run changed host %s: %v\n%s", h.name, recap[h.name], out)
		}
	}
	a.waitOutput(t, "2 10")
	c.waitOutput(t, "1 10")

	// HP002, with the unhealthy host first and no failure allowed: the rollout stops
	// after the first batch, a and b keep HP001.
	inv2 := f.inventory(t, "hosts-c-first.json", c, a, b)
	vars["hotpatch_patches"] = []string{"victim-1.0-1/HP002"}
	vars["rollout_serial"] = 1
	vars["rollout_max_fail_percentage"] = 0
	out, code, recap = f.playbook(t, inv2, vars)
	if code == 0 || recap["c"]["failed"] != 1 || recap["a"]["ok"] != 0 || recap["b"]["ok"] != 0 {
		t.Fatalf("stopping rollout: exit %d, recap %v\n%s", code, recap, out)
	}
	for _, h := range []*host{a, b} {
		if st := f.states(t, h); st["HP001-1-1"] != "ACCEPTED" || st["HP002-1-1"] != "NOT-APPLIED" {
			t.Errorf("host %s after the stopped rollout: %v", h.name, st)
		}
		h.waitOutput(t, "2 10")
	}
}

// playbookCheck runs the playbook in check and diff mode.
func (f *fleet) playbookCheck(t *testing.T, inventory string, extra map[string]any) (string, int, map[string]map[string]int) {
	t.Helper()
	return f.playbook(t, inventory, extra, "--check", "--diff")
}
