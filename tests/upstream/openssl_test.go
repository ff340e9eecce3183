package upstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	syscarebus "github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
	"github.com/syscare/syscare/tests/testenv/prodhost"
)

// OpenSSL 3.0.20 as Debian 12 ships its source (bookworm main, 3.0.20-1~deb12u2): the
// upstream release tarball, built by openssl/openssl.spec with OpenSSL's own Configure and
// make: perlasm-generated assembler, the version script of libcrypto and libssl, the
// default provider's objects taken from the static libdefault.a into libcrypto.so.3.
var opensslOrig = &debsrc.Orig{Source: "openssl", File: "openssl_3.0.20.orig.tar.gz",
	SHA256: "c80a01dfc70ece4dc21168932c37739042d404d46ccc81a5986dd75314ecda6f", Env: "SYSCARE_OPENSSL_ORIG"}

const (
	opensslVersion = "3.0.20"
	opensslFix     = "ocb-evp-cipher-iv.patch"
	libcryptoPath  = "/usr/lib64/libcrypto.so.3"
	libsslPath     = "/usr/lib64/libssl.so.3"

	// ocbprobe's answers (CVE-2026-45445): 3.0.20 encrypts with the same nonce whatever
	// IV EVP_Cipher() is given; the fix makes it use the IV, as the streaming calls do.
	ocbBroken = "ivs=same oneshot=nonce-ignored"
	ocbFixed  = "ivs=differ oneshot=streaming"
)

// opensslIdleProbes is how many more ocbprobe processes run besides the server, the
// client and the probe that answers, so that the apply time is measured across more
// processes that map the library.
const opensslIdleProbes = 5

// TestUpstreamOpenSSLE2E: OpenSSL 3.0.20 from Debian's source package is built into
// source, binary and -debuginfo RPMs; syscare-build turns the upstream fix of
// CVE-2026-45445 (AES-OCB ignores the IV on the EVP_Cipher() path) into a patch RPM for
// libcrypto.so.3. A production root gets the openssl package and the patch RPM (not the
// -debuginfo); from it run `openssl s_server` under a TLS client doing handshakes in a
// loop, the OCB probe and more probe processes; `syscare apply` through syscare-helper on a
// private bus patches every one of them. No handshake fails during apply and remove, and
// the probe shows the nonce reuse gone while the patch is on and back after remove.
func TestUpstreamOpenSSLE2E(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	needBinaries(t)
	needTools(t, "perl", "gcc", "rpm", "dbus-daemon")
	start := time.Now()
	pkgs := cachedRPMs(t, "openssl", "openssl.spec", opensslOrig.Get(t, aptDir()), "openssl-"+opensslVersion+".tar.gz", "openssl", opensslVersion)
	rpmTime := time.Since(start)
	t.Logf("package RPMs ready in %v", rpmTime.Round(time.Second))

	start = time.Now()
	out, rpm := syscareBuild(t, pkgs, "OSSL001", filepath.Join("openssl", opensslFix),
		fmt.Sprintf("patch-openssl-%s-1-OSSL001-1-1.x86_64.rpm", opensslVersion))
	buildTime := time.Since(start)
	for _, want := range []string{"aes_ocb_cipher (providers/implementations/ciphers/cipher_aes_ocb.c): code changed",
		"Patch report for " + libcryptoPath, "/usr/lib64/libssl.so.3: needs nothing replaced"} {
		if !strings.Contains(out, want) {
			t.Errorf("syscare-build output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("syscare-build in %v:\n%s", buildTime.Round(time.Second), out)
	_, meta := patchDir(t, rpm)
	if len(meta.Entities) != 1 {
		t.Fatalf("entities %+v, want one for libcrypto", meta.Entities)
	}
	e := meta.Entities[0]
	var funcs []string
	for _, f := range e.Functions {
		funcs = append(funcs, f.Name)
	}
	if e.TargetPath != libcryptoPath || !slices.Contains(funcs, "aes_ocb_cipher") {
		t.Fatalf("entity %s replaces %q, want aes_ocb_cipher in %s", e.TargetPath, funcs, libcryptoPath)
	}

	// The production root: the package and the patch RPM, no -debuginfo.
	root := t.TempDir()
	for _, r := range []string{pkgs.rpm, rpm} {
		if out, err := exec.Command("rpm", "--root", root, "-i", "--nodeps", "--noscripts", r).CombinedOutput(); err != nil {
			t.Fatalf("rpm -i %s: %v\n%s", filepath.Base(r), err, out)
		}
	}
	lib := filepath.Join(root, libcryptoPath)
	checkBuildID(t, lib, e.BuildID)
	prodhost.Check(t, root, lib, filepath.Join(root, libsslPath))

	procs := startOpenSSLProcs(t, root)
	procs.probe.expect(t, "before the patch", "ocb", ocbBroken)
	before := procs.handshakesPast(t, 0)
	if before.ok == 0 || before.fail != 0 {
		t.Fatalf("before the patch: %+v", before)
	}

	bus := startHelperBus(t, root)
	syscare := func(args ...string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out, err := exec.Command(filepath.Join(binDir, "syscare"), append([]string{"--bus", bus.Addr}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("syscare %q: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out)), time.Since(start)
	}
	list, _ := syscare("list")
	if !strings.Contains(list, e.UUID) || !strings.Contains(list, "NOT-APPLIED") {
		t.Fatalf("syscare list:\n%s", list)
	}

	applied, applyTime := syscare("apply", meta.UUID)
	t.Logf("syscare apply (%d processes) in %v: %s", len(procs.pids), applyTime.Round(time.Millisecond), applied)
	rows, _ := syscare("--json", "processes", e.UUID)
	procs.checkPatched(t, rows)
	procs.probe.expect(t, "patched", "ocb", ocbFixed)
	for _, p := range procs.idle {
		p.expect(t, "patched (an idle probe)", "ocb", ocbFixed)
	}
	during := procs.handshakesPast(t, before.ok) // with the patched server and client

	if during.fail != 0 || during.ok <= before.ok {
		t.Errorf("across the apply: handshakes %+v, then %+v", before, during)
	}

	removed, removeTime := syscare("remove", meta.UUID)
	t.Logf("syscare remove in %v: %s", removeTime.Round(time.Millisecond), removed)
	procs.probe.expect(t, "removed", "ocb", ocbBroken)
	after := procs.handshakesPast(t, during.ok)
	if after.fail != 0 || after.ok <= during.ok {
		t.Errorf("across the remove: handshakes %+v, then %+v", during, after)
	}
	t.Logf("figures: package RPMs %v, syscare-build %v, apply %v and remove %v across %d processes, %d handshakes without failure",
		rpmTime.Round(time.Second), buildTime.Round(time.Second), applyTime.Round(time.Millisecond),
		removeTime.Round(time.Millisecond), len(procs.pids), after.ok)
}

func checkBuildID(t *testing.T, path, want string) {
	t.Helper()
	f, err := elfsafe.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if id, _ := elfsafe.BuildID(f.File); hex.EncodeToString(id) != want {
		t.Fatalf("patch.json build-id %s, installed %s has %x", want, path, id)
	}
}

// opensslProcs are the processes of the production root that map its libcrypto.
type opensslProcs struct {
	server *exec.Cmd
	client *repl // tlsload
	probe  *repl // ocbprobe
	idle   []*repl
	pids   []int
}

type handshakeCount struct{ ok, fail int }

// handshakes asks the client for its counters.
func (p *opensslProcs) handshakes(t *testing.T) handshakeCount {
	t.Helper()
	line := p.client.ask(t, "stat")
	var c handshakeCount
	if _, err := fmt.Sscanf(line, "ok=%d fail=%d", &c.ok, &c.fail); err != nil {
		t.Fatalf("tlsload printed %q: %v", line, err)
	}
	return c
}

// handshakesPast asks the client for its counters until more than ok handshakes
// succeeded or one failed: a loaded machine may not have run one since the last ask
// (CI once read ok=0 fail=0 before the first handshake ended). The bound is a hang
// guard; the counters it ends with are returned for the caller to judge.
func (p *opensslProcs) handshakesPast(t *testing.T, ok int) handshakeCount {
	t.Helper()
	c := p.handshakes(t)
	for end := time.Now().Add(60 * time.Second); c.ok <= ok && c.fail == 0 && time.Now().Before(end); c = p.handshakes(t) {
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// checkPatched reads `syscare --json processes` and wants every process of the test in
// it, patched.
func (p *opensslProcs) checkPatched(t *testing.T, rows string) {
	t.Helper()
	var ps []syscarebus.ProcessState
	if err := json.Unmarshal([]byte(rows), &ps); err != nil {
		t.Fatalf("syscare processes: %v\n%s", err, rows)
	}
	status := map[int]string{}
	for _, r := range ps {
		status[int(r.Pid)] = r.Status
	}
	for _, pid := range p.pids {
		if s, ok := status[pid]; !ok || s != "ACTIVED" {
			t.Errorf("pid %d: status %q in syscare processes:\n%s", pid, s, rows)
		}
	}
}

// startOpenSSLProcs starts, from the root's package, `openssl s_server -www` with a fresh
// certificate, the handshake client, the probe and the idle probes, and checks that each
// maps the root's libcrypto.
func startOpenSSLProcs(t *testing.T, root string) *opensslProcs {
	t.Helper()
	dir := t.TempDir()
	libdir := filepath.Join(root, "usr/lib64")
	build := func(name string, extra ...string) string {
		t.Helper()
		prog := filepath.Join(dir, name)
		args := append([]string{"-O2", "-o", prog, filepath.Join("openssl", name+".c"), "-I" + filepath.Join(root, "usr/include"),
			"-L" + libdir, "-Wl,-rpath," + libdir}, extra...)
		if out, err := exec.Command("gcc", append(args, "-lcrypto")...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %s.c: %v\n%s", name, err, out)
		}
		return prog
	}
	tlsload := build("tlsload", "-pthread", "-lssl")
	ocbprobe := build("ocbprobe")
	cert, key := writeTestCert(t, dir)
	port := freePort(t)

	p := &opensslProcs{}
	p.server = exec.Command(filepath.Join(root, "usr/bin/openssl"), "s_server", "-accept", "127.0.0.1:"+strconv.Itoa(port),
		"-cert", cert, "-key", key, "-www", "-quiet")
	p.server.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libdir, "OPENSSL_CONF=/dev/null")
	var serverErr strings.Builder
	p.server.Stdout, p.server.Stderr = io.Discard, &serverErr
	if err := p.server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.server.Process.Kill()
		p.server.Wait()
		if t.Failed() {
			t.Logf("s_server stderr:\n%s", serverErr.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("s_server does not listen on %d:\n%s", port, serverErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.client = startLines(t, nil, tlsload, strconv.Itoa(port))
	p.probe = startLines(t, nil, ocbprobe)
	for i := 0; i < opensslIdleProbes; i++ {
		p.idle = append(p.idle, startLines(t, nil, ocbprobe))
	}
	for _, r := range append([]*repl{p.client, p.probe}, p.idle...) {
		if banner := r.next(t, "the banner"); !strings.HasPrefix(banner, "OpenSSL "+opensslVersion+" ") {
			t.Fatalf("banner %q", banner)
		}
		p.pids = append(p.pids, r.cmd.Process.Pid)
	}
	p.pids = append(p.pids, p.server.Process.Pid)
	for _, pid := range p.pids {
		maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
		if !strings.Contains(string(maps), filepath.Join(root, libcryptoPath)) {
			t.Fatalf("pid %d does not map the root's libcrypto:\n%s", pid, maps)
		}
	}
	return p
}

// startHelperBus starts a private bus whose activation runs the tree's syscare-helper on
// root, and builds the syscare CLI next to the other binaries.
func startHelperBus(t *testing.T, root string) *testbus.Bus {
	t.Helper()
	repoDir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", binDir+"/", "./helper/cmd/syscare-helper", "./helper/cmd/syscare")
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bus, err := testbus.Start(testbus.Options{RepoDir: repoDir, Dir: t.TempDir(),
		HelperExec: fmt.Sprintf("%s --root %s --idle-timeout 120s --log-level debug", filepath.Join(binDir, "syscare-helper"), root)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bus.Close()
		if t.Failed() {
			t.Logf("bus and helper log:\n%s", bus.Log)
		}
	})
	return bus
}

// writeTestCert writes a self-signed P-256 certificate for localhost and its key.
func writeTestCert(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
