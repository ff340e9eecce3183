package manager

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/kpatch"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// The kernel driver's state machine on a temporary sysfs tree; the real kernel is
// exercised by tests/kernel under qemu.

const (
	kRelease = "6.1.0-test-amd64"
	kBuildID = "0123456789abcdef0123456789abcdef01234567"
	kPatch   = "00000000-0000-4000-8000-0000000000c1"
	kEntity  = "00000000-0000-4000-8000-0000000000c2"
	kModule  = "livepatch_fix"
)

// sysKernel plays the kernel's module syscalls on the tree: loading creates
// /sys/module/<name> and an enabled /sys/kernel/livepatch/<name>; with stall, the
// transition stays until enabled is reversed.
type sysKernel struct {
	root  string
	stall bool
	mu    sync.Mutex
	calls []string
	wg    sync.WaitGroup
}

func (k *sysKernel) log() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return strings.Join(k.calls, " ")
}

func (k *sysKernel) FinitModule(f *os.File, _ string) error {
	mi, err := kpatch.ReadModInfo(f.Name())
	if err != nil {
		return unix.ENOEXEC
	}
	k.mu.Lock()
	k.calls = append(k.calls, "load")
	k.mu.Unlock()
	mod := filepath.Join(k.root, "sys/module", mi.Name)
	if _, err := os.Stat(mod); err == nil {
		return unix.EEXIST
	}
	os.MkdirAll(mod, 0o755)
	os.WriteFile(filepath.Join(mod, "initstate"), []byte("live\n"), 0o644)
	klp := filepath.Join(k.root, "sys/kernel/livepatch", mi.Name)
	os.MkdirAll(klp, 0o755)
	os.WriteFile(filepath.Join(klp, "enabled"), []byte("1\n"), 0o644)
	tr := "0\n"
	if k.stall {
		tr = "1\n"
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			for i := 0; i < 5000; i++ {
				if b, _ := os.ReadFile(filepath.Join(klp, "enabled")); strings.TrimSpace(string(b)) == "0" {
					os.WriteFile(filepath.Join(klp, "transition"), []byte("0\n"), 0o644)
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	return os.WriteFile(filepath.Join(klp, "transition"), []byte(tr), 0o644)
}

func (k *sysKernel) DeleteModule(name string) error {
	k.mu.Lock()
	k.calls = append(k.calls, "delete")
	k.mu.Unlock()
	mod := filepath.Join(k.root, "sys/module", name)
	if _, err := os.Stat(mod); err != nil {
		return unix.ENOENT
	}
	klp := filepath.Join(k.root, "sys/kernel/livepatch", name)
	if b, _ := os.ReadFile(filepath.Join(klp, "enabled")); strings.TrimSpace(string(b)) == "1" {
		return unix.EBUSY
	}
	os.RemoveAll(klp)
	return os.RemoveAll(mod)
}

type kenv struct {
	t    *testing.T
	root string
	k    *sysKernel
	m    *Manager
}

func newKernelEnv(t *testing.T) *kenv {
	root := t.TempDir()
	e := &kenv{t: t, root: root, k: &sysKernel{root: root}}
	t.Cleanup(e.k.wg.Wait)
	for _, d := range []string{"sys/kernel/livepatch", "sys/module", "proc"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	// /sys/kernel/notes: the running vmlinux's notes, with its GNU build-id.
	id, _ := hex.DecodeString(kBuildID)
	note := binary.LittleEndian.AppendUint32(nil, 4)
	note = binary.LittleEndian.AppendUint32(note, uint32(len(id)))
	note = binary.LittleEndian.AppendUint32(note, 3)
	note = append(append(note, "GNU\x00"...), id...)
	os.WriteFile(filepath.Join(root, "sys/kernel/notes"), note, 0o444)
	e.addPatch(kRelease, kBuildID)
	e.restart()
	return e
}

// addPatch installs a kernel patch whose module claims release and whose patch.json
// names the vmlinux build-id.
func (e *kenv) addPatch(release, buildID string) {
	dir := filepath.Join(e.root, PatchesDir, kPatch)
	os.MkdirAll(dir, 0o755)
	src := fmt.Sprintf(`static const char a[] __attribute__((section(".modinfo"), used, aligned(1))) = "name=%s";
static const char b[] __attribute__((section(".modinfo"), used, aligned(1))) = "vermagic=%s SMP preempt mod_unload ";
static const char c[] __attribute__((section(".modinfo"), used, aligned(1))) = "livepatch=Y";
`, kModule, release)
	os.WriteFile(filepath.Join(dir, "m.c"), []byte(src), 0o644)
	ko := filepath.Join(dir, "livepatch-fix.ko")
	if out, err := exec.Command("gcc", "-c", "-o", ko, filepath.Join(dir, "m.c")).CombinedOutput(); err != nil {
		e.t.Fatalf("gcc: %v\n%s", err, out)
	}
	os.Remove(filepath.Join(dir, "m.c"))
	b, _ := os.ReadFile(ko)
	p := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: kPatch, Name: "KP001", Version: "1", Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindKernel,
		Target: patchmeta.Package{Name: "kernel", Version: "6.1.0", Release: "test", Arch: "x86_64"},
		Entities: []patchmeta.Entity{{UUID: kEntity, File: "livepatch-fix.ko", TargetPath: "/boot/vmlinuz-" + release,
			BuildID: buildID, SHA256: fmt.Sprintf("%x", sha256sum(b))}}}
	f, err := os.Create(filepath.Join(dir, patchmeta.FileName))
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if err := p.Encode(f); err != nil {
		e.t.Fatal(err)
	}
}

// restart makes a new manager (a restarted helper) over the same root and sysfs.
func (e *kenv) restart() {
	log := logrus.New()
	log.SetOutput(testWriter{e.t})
	// A stalled transition times out at once; its reversal, which the fake kernel ends,
	// gets a hang guard (at 300 ms too, a fake-kernel goroutine run late on a loaded
	// machine made the reversal look stalled as well).
	kp := &kpatch.Patcher{Root: e.root, Sys: e.k, Release: kRelease, Timeout: 300 * time.Millisecond,
		RevertTimeout: 30 * time.Second, Poll: time.Millisecond}
	e.m = New(Config{
		Root:          e.root,
		Log:           log,
		Drivers:       map[string]Driver{patchmeta.KindKernel: &KernelDriver{K: kp}},
		VerifyPackage: func(context.Context, string, patchmeta.Package) error { return nil },
	})
	if err := e.m.Start(context.Background()); err != nil {
		e.t.Logf("start: %v", err)
	}
}

func (e *kenv) do(op Op) error {
	_, err := e.m.Transition(context.Background(), op, []string{kPatch}, false)
	return err
}

func (e *kenv) expect(want State, sysfs kpatch.State) {
	e.t.Helper()
	ss, err := e.m.Status([]string{kPatch})
	if err != nil {
		e.t.Fatal(err)
	}
	kp := &kpatch.Patcher{Root: e.root}
	st, err := kp.Status(kModule)
	if err != nil {
		e.t.Fatal(err)
	}
	if ss[0].State != want || st.State != sysfs {
		e.t.Fatalf("state %v, sysfs %v; want %v, %v", ss[0].State, st.State, want, sysfs)
	}
}

func TestKernelDriverLifecycle(t *testing.T) {
	e := newKernelEnv(t)
	e.expect(NotApplied, kpatch.Unloaded)
	if err := e.do(OpApply); err != nil {
		t.Fatal(err)
	}
	e.expect(Actived, kpatch.Enabled)

	// A restarted helper finds it enabled in sysfs and does not load it again.
	e.restart()
	e.expect(Actived, kpatch.Enabled)
	if got := e.k.log(); got != "load" {
		t.Fatalf("syscalls after restart: %q", got)
	}

	if err := e.do(OpDeactive); err != nil {
		t.Fatal(err)
	}
	e.expect(Deactived, kpatch.Loaded)
	// Active again: a disabled live patch only comes back by reloading its module.
	if err := e.do(OpActive); err != nil {
		t.Fatal(err)
	}
	e.expect(Actived, kpatch.Enabled)
	if err := e.do(OpRemove); err != nil {
		t.Fatal(err)
	}
	e.expect(NotApplied, kpatch.Unloaded)
	if got := e.k.log(); got != "load delete load delete" {
		t.Fatalf("syscalls: %q", got)
	}

	// Deactivated, then the helper restarts: the module is loaded but the patch off.
	if err := e.do(OpApply); err != nil {
		t.Fatal(err)
	}
	if err := e.do(OpDeactive); err != nil {
		t.Fatal(err)
	}
	e.restart()
	e.expect(Deactived, kpatch.Loaded)
	if err := e.do(OpRemove); err != nil {
		t.Fatal(err)
	}
	e.expect(NotApplied, kpatch.Unloaded)
}

func TestKernelDriverRefuses(t *testing.T) {
	e := newKernelEnv(t)
	e.addPatch("6.1.0-other-amd64", kBuildID)
	e.m.Rescan()
	if err := e.do(OpApply); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "6.1.0-other-amd64") {
		t.Fatalf("apply for another release: %v", err)
	}
	e.expect(NotApplied, kpatch.Unloaded)

	e.addPatch(kRelease, strings.Repeat("ab", 20))
	e.m.Rescan()
	if err := e.do(OpApply); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "build-id") {
		t.Fatalf("apply for another vmlinux: %v", err)
	}
	e.expect(NotApplied, kpatch.Unloaded)
	if got := e.k.log(); got != "" {
		t.Fatalf("refused patches reached the kernel: %q", got)
	}
}

func TestKernelDriverStalledTransition(t *testing.T) {
	e := newKernelEnv(t)
	e.k.stall = true
	task := filepath.Join(e.root, "proc/42/task/42")
	os.MkdirAll(task, 0o755)
	os.WriteFile(filepath.Join(task, "patch_state"), []byte("0\n"), 0o644)
	os.WriteFile(filepath.Join(task, "comm"), []byte("sleeper\n"), 0o644)
	err := e.do(OpApply)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "42 (sleeper)") {
		t.Fatalf("apply with a stalled task: %v", err)
	}
	// Reversed and unloaded: nothing is left in the kernel.
	ss, _ := e.m.Status([]string{kPatch})
	if ss[0].State == Actived {
		t.Fatalf("state %v after a stalled apply", ss[0].State)
	}
	st, _ := (&kpatch.Patcher{Root: e.root}).Status(kModule)
	if st.State != kpatch.Unloaded {
		t.Fatalf("sysfs %v after a stalled apply", st.State)
	}
}

func TestKernelDriverUnderRootPrefix(t *testing.T) {
	// A sandbox's root prefix never reaches the host kernel's module syscalls.
	d := NewKernelDriver(t.TempDir())
	if err := d.K.Sys.FinitModule(nil, ""); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("finit_module under a prefix: %v", err)
	}
	if _, ok := NewKernelDriver("/").K.Sys.(kpatch.Kernel); !ok {
		t.Fatal("root / does not use the real kernel")
	}
}
