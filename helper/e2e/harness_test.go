package e2e

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
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/rpmbuild/selfcontain"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// Fixtures built once per test binary.
var fx struct {
	dir     string // world-readable scratch (binaries, rpm, objects)
	repo    string
	bin     string
	rpm     string            // victim-1.0-1 RPM
	objects map[string][]byte // patch name -> object
}

// victimC with the argument "threads" also runs 7 threads calling both functions.
const victimC = `#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noipa)) int greet(void) { return 1; }
__attribute__((noipa)) int world(void) { return 10; }
static volatile int sink;
static void *worker(void *arg) { (void)arg; for (;;) { sink += greet() + world(); usleep(50); } return NULL; }
int main(int argc, char **argv) {
	if (argc > 1 && !strcmp(argv[1], "once")) { printf("%d %d\n", greet(), world()); return 0; }
	if (argc > 1 && !strcmp(argv[1], "threads")) {
		pthread_t t;
		for (int i = 0; i < 7; i++) pthread_create(&t, NULL, worker, NULL);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) { printf("%d %d\n", greet(), world()); usleep(5000); }
}
`

// libC and libVictimC: a shared library target and a program using it.
const libC = `__attribute__((noipa)) int lgreet(void) { return 5; }
`

const libVictimC = `#include <stdio.h>
#include <string.h>
#include <unistd.h>
int lgreet(void);
int main(int argc, char **argv) {
	if (argc > 1 && !strcmp(argv[1], "once")) { printf("%d\n", lgreet()); return 0; }
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) { printf("%d\n", lgreet()); usleep(5000); }
}
`

// patchSources are the patches the tests install, written with upatch.h.
var patchSources = map[string]string{
	"greet2":  "#include <upatch.h>\nint greet_v2(void) { return 2; }\nUPATCH_FUNC(greet, greet_v2);\n",
	"greet3":  "#include <upatch.h>\nint greet_v3(void) { return 3; }\nUPATCH_FUNC(greet, greet_v3);\n",
	"world20": "#include <upatch.h>\nint world_v2(void) { return 20; }\nUPATCH_FUNC(world, world_v2);\n",
	"lgreet6": "#include <upatch.h>\nint lgreet_v2(void) { return 6; }\nUPATCH_FUNC(lgreet, lgreet_v2);\n",
	"both":    "#include <upatch.h>\nint greet_v4(void) { return 2; }\nint world_v4(void) { return 20; }\nUPATCH_FUNC(greet, greet_v4);\nUPATCH_FUNC(world, world_v4);\n",
}

// patchTargets names the file of the package each of patchSources patches.
var patchTargets = map[string]string{"greet2": "victim", "greet3": "victim", "world20": "victim", "both": "victim", "lgreet6": "libgreet.so"}

// The files are stripped before rpmbuild sees them (setup); %__os_install_post is
// emptied so that the package holds exactly those files.
const victimSpec = `Name: victim
Version: 1.0
Release: 1
Summary: hot patch test target
License: MIT
AutoReq: no
%global debug_package %{nil}
%global __os_install_post %{nil}
%description
Test target of the helper's end-to-end tests.
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib
cp %{_sourcedir}/victim %{_sourcedir}/victimlib %{buildroot}/usr/bin/
cp %{_sourcedir}/libgreet.so %{buildroot}/usr/lib/
%files
/usr/bin/victim
/usr/bin/victimlib
/usr/lib/libgreet.so
`

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		code = 1
	}
	if fx.dir != "" {
		os.RemoveAll(fx.dir)
	}
	os.Exit(code)
}

func sh(dir string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func setup(m *testing.M) (int, error) {
	var err error
	if fx.repo, err = filepath.Abs("../.."); err != nil {
		return 1, err
	}
	if fx.dir, err = os.MkdirTemp("", "syscare-e2e"); err != nil {
		return 1, err
	}
	// Unprivileged callers (su nobody) need to reach the binaries and the bus socket.
	os.Chmod(fx.dir, 0o755)
	fx.bin = filepath.Join(fx.dir, "bin")
	if err := sh(fx.repo, "go", "build", "-o", fx.bin+"/", "./helper/cmd/syscare-helper", "./helper/cmd/syscare"); err != nil {
		return 1, err
	}
	top := filepath.Join(fx.dir, "rpm")
	src := filepath.Join(top, "SOURCES")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "victim.c"), []byte(victimC), 0o644)
	os.WriteFile(filepath.Join(src, "libgreet.c"), []byte(libC), 0o644)
	os.WriteFile(filepath.Join(src, "victimlib.c"), []byte(libVictimC), 0o644)
	for _, args := range [][]string{
		{"-O2", "-g", "-pthread", "-Wl,--build-id", "-o", "victim", "victim.c"},
		{"-O2", "-g", "-Wl,--build-id", "-shared", "-fPIC", "-o", "libgreet.so", "libgreet.c"},
		{"-O2", "-g", "-Wl,--build-id", "-o", "victimlib", "victimlib.c", "-L.", "-lgreet"},
	} {
		if err := sh(src, "gcc", args...); err != nil {
			return 1, err
		}
	}
	// As an RPM build does: the package ships stripped files, their debug copies stay
	// with the builder (outside every sandbox root), where the patches are resolved.
	debugDir := filepath.Join(fx.dir, "debug")
	os.MkdirAll(debugDir, 0o755)
	for _, f := range []string{"victim", "libgreet.so", "victimlib"} {
		if err := selfcontain.SplitDebug(context.Background(), filepath.Join(src, f), filepath.Join(debugDir, f+".debug")); err != nil {
			return 1, err
		}
	}
	os.WriteFile(filepath.Join(top, "victim.spec"), []byte(victimSpec), 0o644)
	if err := sh(top, "rpmbuild", "-bb", "--nodeps", "--define", "_topdir "+top, filepath.Join(top, "victim.spec")); err != nil {
		return 1, err
	}
	rpms, _ := filepath.Glob(filepath.Join(top, "RPMS/*/victim-1.0-1*.rpm"))
	if len(rpms) != 1 {
		return 1, fmt.Errorf("victim rpm not built: %v", rpms)
	}
	fx.rpm = rpms[0]
	fx.objects = map[string][]byte{}
	for name, code := range patchSources {
		c := filepath.Join(fx.dir, name+".c")
		os.WriteFile(c, []byte(code), 0o644)
		if err := sh(fx.dir, "gcc", "-c", "-O2", "-ffunction-sections", "-fdata-sections",
			"-I", filepath.Join(fx.repo, "runtime/include"), "-o", name+".o", c); err != nil {
			return 1, err
		}
		// The hand-written object carries the offsets of what it uses in its target, so
		// that it applies to the stripped file with no debuginfo in the root.
		debug := filepath.Join(debugDir, patchTargets[name]+".debug")
		sc := filepath.Join(fx.dir, name+"-sc.o")
		if _, err := selfcontain.Make(context.Background(), filepath.Join(fx.dir, name+".o"), debug, sc); err != nil {
			return 1, fmt.Errorf("patch %s: %w", name, err)
		}
		fx.objects[name], _ = os.ReadFile(sc)
	}
	return m.Run(), nil
}

// sandbox is a scratch root with the victim package installed and a private bus whose
// activation starts the helper on that root.
type sandbox struct {
	t       testing.TB
	dir     string
	root    string
	addr    string
	bus     *testbus.Bus
	log     *testbus.Log
	victims []*victim
}

// newSandbox starts a sandbox; options: "polkit" also makes polkitd activatable on the
// private bus.
func newSandbox(t testing.TB, opts ...string) *sandbox {
	dir, err := os.MkdirTemp(fx.dir, "sb")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := &sandbox{t: t, dir: dir, root: filepath.Join(dir, "root")}
	os.MkdirAll(filepath.Join(s.root, "usr/lib/syscare/patches"), 0o755)
	if err := sh(dir, "rpm", "--root", s.root, "-i", "--nodeps", "--noscripts", fx.rpm); err != nil {
		t.Fatal(err)
	}
	prodhost.Check(t, s.root, filepath.Join(s.root, "usr/bin/victim"), filepath.Join(s.root, "usr/bin/victimlib"),
		filepath.Join(s.root, "usr/lib/libgreet.so"))
	idle := "60s"
	for _, o := range opts {
		if v, ok := strings.CutPrefix(o, "idle="); ok {
			idle = v
		}
	}
	bo := testbus.Options{RepoDir: fx.repo, Dir: dir,
		HelperExec: fmt.Sprintf("%s/syscare-helper --root %s --idle-timeout %s --log-level debug", fx.bin, s.root, idle),
		// Activated services (polkitd) find "the system bus" through this.
		Env: []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(dir, "bus.sock")}}
	if slices.Contains(opts, "polkit") {
		bo.Services = map[string]string{"org.freedesktop.PolicyKit1": "/usr/lib/polkit-1/polkitd --no-debug"}
	}
	bus, err := testbus.Start(bo)
	if err != nil {
		t.Fatal(err)
	}
	s.bus, s.addr, s.log = bus, bus.Addr, bus.Log
	t.Cleanup(s.close)
	return s
}

func (s *sandbox) close() {
	for _, v := range s.victims {
		v.stop()
	}
	s.bus.Close()
	if s.t.Failed() || os.Getenv("SYSCARE_E2E_LOG") != "" {
		s.t.Logf("bus and helper log:\n%s", s.log)
	}
}

// helperPid returns the pid of the process owning the bus name, or 0.
func (s *sandbox) helperPid() int { return s.bus.HelperPid() }

// killHelper kills the helper with SIGKILL and waits until its name is gone.
func (s *sandbox) killHelper() {
	pid := s.helperPid()
	if pid == 0 {
		s.t.Fatal("helper is not running")
	}
	syscall.Kill(pid, syscall.SIGKILL)
	// Bounded only against a hang: a loaded machine may take seconds to reap it.
	for end := time.Now().Add(hangGuard); time.Now().Before(end) && s.helperPid() != 0; {
		time.Sleep(10 * time.Millisecond)
	}
}

// syscare runs the CLI and returns its stdout, stderr and exit status.
func (s *sandbox) syscare(args ...string) (string, string, int) {
	return s.syscareAs("", args...)
}

func (s *sandbox) syscareAs(user string, args ...string) (string, string, int) {
	var cmd *exec.Cmd
	if user == "" {
		cmd = exec.Command(filepath.Join(fx.bin, "syscare"), args...)
		cmd.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+s.addr)
	} else {
		q := []string{"DBUS_SYSTEM_BUS_ADDRESS='" + s.addr + "'", filepath.Join(fx.bin, "syscare")}
		for _, a := range args {
			q = append(q, "'"+a+"'")
		}
		cmd = exec.Command("su", user, "-s", "/bin/sh", "-c", strings.Join(q, " "))
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("syscare %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// must runs the CLI and fails the test unless it exits 0.
func (s *sandbox) must(args ...string) string {
	s.t.Helper()
	out, errOut, code := s.syscare(args...)
	if code != 0 {
		s.t.Fatalf("syscare %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs the CLI and fails the test unless it exits non-zero; it returns stderr.
func (s *sandbox) fails(args ...string) string {
	s.t.Helper()
	out, errOut, code := s.syscare(args...)
	if code == 0 {
		s.t.Fatalf("syscare %s succeeded, want failure\n%s", strings.Join(args, " "), out)
	}
	return errOut
}

// status returns the status of one entity via the CLI's JSON output.
func (s *sandbox) status(id string) string {
	s.t.Helper()
	var ss []syscarebus.EntityState
	if err := json.Unmarshal([]byte(s.must("--json", "status", id)), &ss); err != nil || len(ss) != 1 {
		s.t.Fatalf("status %s: %v %v", id, ss, err)
	}
	return ss[0].Status
}

type patchSpec struct {
	uuid, entity string
	name         string // patch name, e.g. HP001
	object       string // key of fx.objects
	funcs        []string
	version      string // target version (default 1.0)
	target       string // target ELF (default /usr/bin/victim)
	corrupt      bool   // sha256 in patch.json does not match
}

// install writes a patch directory for the victim into the root.
func (s *sandbox) install(p patchSpec) {
	s.t.Helper()
	obj := fx.objects[p.object]
	sum := sha256.Sum256(obj)
	digest := hex.EncodeToString(sum[:])
	if p.corrupt {
		digest = strings.Repeat("0", 64)
	}
	if p.version == "" {
		p.version = "1.0"
	}
	if p.target == "" {
		p.target = "/usr/bin/victim"
	}
	f, err := elfsafe.Open(filepath.Join(s.root, p.target))
	if err != nil {
		s.t.Fatal(err)
	}
	id, err := elfsafe.BuildID(f.File)
	f.Close()
	if err != nil || id == nil {
		s.t.Fatalf("victim build-id: %v", err)
	}
	meta := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: p.uuid, Name: p.name, Version: "1", Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindUser, Description: "test patch " + p.name,
		Target: patchmeta.Package{Name: "victim", Version: p.version, Release: "1", Arch: "x86_64", License: "MIT"},
		Entities: []patchmeta.Entity{{UUID: p.entity, File: "victim.o", TargetPath: p.target,
			BuildID: hex.EncodeToString(id), SHA256: digest}}}
	for _, fn := range p.funcs {
		meta.Entities[0].Functions = append(meta.Entities[0].Functions, patchmeta.Function{Name: fn})
	}
	dir := filepath.Join(s.root, "usr/lib/syscare/patches", p.uuid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "victim.o"), obj, 0o644)
	var b bytes.Buffer
	if err := meta.Encode(&b); err != nil {
		s.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, patchmeta.FileName), b.Bytes(), 0o644)
}

// victim is a running target process whose latest output line is kept.
type victim struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	last string
	n    int
}

func (s *sandbox) startVictim() *victim {
	s.t.Helper()
	return s.startProgram("usr/bin/victim", "1 10")
}

// startProgram starts a looping program of the root and waits until it prints first.
func (s *sandbox) startProgram(rel, first string, args ...string) *victim {
	s.t.Helper()
	v := &victim{cmd: exec.Command(filepath.Join(s.root, rel), args...)}
	v.cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(s.root, "usr/lib"))
	out, _ := v.cmd.StdoutPipe()
	if err := v.cmd.Start(); err != nil {
		s.t.Fatal(err)
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
	s.victims = append(s.victims, v)
	s.waitOutput(v, first)
	return v
}

func (v *victim) stop() {
	v.cmd.Process.Kill()
	v.cmd.Wait()
}

// waitOutput waits until v prints want (fresh output, after this call).
func (s *sandbox) waitOutput(v *victim, want string) {
	s.t.Helper()
	v.mu.Lock()
	start := v.n
	v.mu.Unlock()
	var last string
	for end := time.Now().Add(hangGuard); time.Now().Before(end); {
		v.mu.Lock()
		last, n := v.last, v.n
		v.mu.Unlock()
		if n > start+1 && last == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	v.mu.Lock()
	last = v.last
	v.mu.Unlock()
	s.t.Fatalf("pid %d prints %q, want %q", v.cmd.Process.Pid, last, want)
}

// hangGuard bounds the waits of these tests for what a working helper does in well
// under a second: only a hang reaches it, not a loaded CI machine (10x slower or more).
const hangGuard = 30 * time.Second

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	waitForD(t, hangGuard, cond)
}

func waitForD(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("condition not reached in %s", d)
}

// startTracedVictim starts a victim traced by this test (so that the helper cannot attach
// to it) and returns its pid; it is killed when the test ends.
func (s *sandbox) startTracedVictim() int {
	s.t.Helper()
	pidc := make(chan int)
	done := make(chan struct{})
	go func() {
		// ptrace belongs to the thread that attached: keep this one until the end.
		runtime.LockOSThread()
		cmd := exec.Command(filepath.Join(s.root, "usr/bin/victim"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
		if err := cmd.Start(); err != nil {
			pidc <- -1
			return
		}
		pid := cmd.Process.Pid
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil) // the stop at exec
		syscall.PtraceCont(pid, 0)
		pidc <- pid
		<-done
		syscall.Kill(pid, syscall.SIGKILL)
		cmd.Wait()
	}()
	pid := <-pidc
	if pid < 0 {
		s.t.Fatal("start traced victim")
	}
	s.t.Cleanup(func() { close(done) })
	return pid
}
