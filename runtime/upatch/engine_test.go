package upatch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
)

const (
	uuid1 = "11111111-1111-4111-8111-111111111111"
	uuid2 = "22222222-2222-4222-8222-222222222222"
)

// 1. A single-threaded loop: the output switches on patch and back on unpatch.
func TestPatchUnpatchSingleThread(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil)
	_, obj := buildPatch(t, "fix_greet.c", bin, "")
	v.expect(t, "greet=1")
	e := NewEngine("/")
	if err := e.Patch(v.pid(), obj, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=2")
	applied, err := e.Info(v.pid())
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 1 || applied[0].UUID != uuid1 || len(applied[0].Funcs) != 1 || applied[0].Funcs[0].Name != "greet" ||
		applied[0].Target != bin {
		t.Fatalf("info = %+v", applied)
	}
	if err := e.Patch(v.pid(), obj, opts(uuid1)); !errors.Is(err, ErrAlreadyApplied) {
		t.Fatalf("second patch with the same uuid: %v, want ErrAlreadyApplied", err)
	}
	if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=1")
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("info after unpatch = %+v", applied)
	}
	if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); !errors.Is(err, ErrNotApplied) {
		t.Fatalf("unpatch twice: %v, want ErrNotApplied", err)
	}
	// The memory is gone: no anonymous mapping starts with a header any more.
	maps, _ := os.ReadFile("/proc/" + itoa(v.pid()) + "/maps")
	if n := strings.Count(string(maps), "\n"); n == 0 {
		t.Fatal("no maps")
	}
}

// 2, 3, 7. New static helper, libc through the PLT, a new string literal, a global and a
// function-static of the original, a TLS variable of the executable.
func TestPatchRichCode(t *testing.T) {
	for _, flags := range [][]string{nil, {"-no-pie"}} {
		name := "pie"
		if flags != nil {
			name = "no-pie"
		}
		t.Run(name, func(t *testing.T) {
			bin := buildVictim(t, flags...)
			v := start(t, bin, nil)
			pflags := []string{}
			if flags != nil {
				pflags = []string{"-fno-pie"}
			}
			_, obj := buildPatch(t, "fix_rich.c", bin, "", pflags...)
			e := NewEngine("/")
			if err := e.Patch(v.pid(), obj, opts(uuid1)); err != nil {
				t.Fatal(err)
			}
			line := v.expect(t, "greet=60")
			// work(1) = 101, tls 41+1000, bump jumped by 1000, counter advanced by 2 per round.
			for _, want := range []string{"work=101", "tls=1041"} {
				if !strings.Contains(line, want) {
					t.Errorf("patched line %q lacks %q", line, want)
				}
			}
			var bump, counter int
			if _, err := sscan(line, &bump, &counter); err != nil || bump < 1000 || counter < 2 {
				t.Errorf("patched line %q: bump=%d counter=%d", line, bump, counter)
			}
			if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
				t.Fatal(err)
			}
			line = v.expect(t, "greet=1")
			if !strings.Contains(line, "work=2") || !strings.Contains(line, "tls=41") {
				t.Errorf("unpatched line %q", line)
			}
		})
	}
}

// 4. Eight threads calling a patched function.
func TestPatchEightThreads(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil, "8")
	_, obj := buildPatch(t, "fix_rich.c", bin, "")
	e := NewEngine("/")
	for i := 0; i < 20; i++ {
		if err := e.Patch(v.pid(), obj, opts(uuid1)); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		v.expect(t, "work=101")
		if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		v.expect(t, "work=2")
	}
	if n := threadCount(t, v.pid()); n != 10 {
		t.Errorf("process has %d threads, want 10 (main, stdin reader, 8 workers)", n)
	}
}

// 6. A shared-library function patched in two processes that share the library.
func TestPatchSharedLibrary(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libshared.so")
	gcc(t, "-O2", "-g", "-fPIC", "-shared", testdata("libshared.c"), "-o", lib)
	user := filepath.Join(dir, "libuser")
	gcc(t, "-O2", testdata("libuser.c"), "-L", dir, "-lshared", "-Wl,-rpath,"+dir, "-o", user)
	a, b := start(t, user, nil), start(t, user, nil)
	_, obj := buildPatch(t, "fix_lib.c", lib, "", "-fPIC")
	pids, err := Processes(lib)
	if err != nil {
		t.Fatal(err)
	}
	if !containsAll(pids, a.pid(), b.pid()) {
		t.Fatalf("Processes(%s) = %v, want %d and %d", lib, pids, a.pid(), b.pid())
	}
	e := NewEngine("/")
	o := opts(uuid1)
	o.Binary = lib
	for _, r := range e.PatchAll([]int{a.pid(), b.pid()}, obj, o) {
		if r.Err != nil {
			t.Fatalf("pid %d: %v", r.Pid, r.Err)
		}
	}
	a.expect(t, "lib=200")
	b.expect(t, "lib=200")
	for _, r := range e.UnpatchAll([]int{a.pid(), b.pid()}, uuid1, o) {
		if r.Err != nil {
			t.Fatalf("pid %d: %v", r.Pid, r.Err)
		}
	}
	a.expect(t, "lib=100")
	b.expect(t, "lib=100")
}

// A library named through a symlinked directory (as /lib64 on merged-/usr systems) is
// the library the process maps: found by file identity, reported under the maps name.
func TestPatchSharedLibraryOtherSpelling(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libshared.so")
	gcc(t, "-O2", "-g", "-fPIC", "-shared", testdata("libshared.c"), "-o", lib)
	user := filepath.Join(dir, "libuser")
	gcc(t, "-O2", testdata("libuser.c"), "-L", dir, "-lshared", "-Wl,-rpath,"+dir, "-o", user)
	a := start(t, user, nil)
	link := filepath.Join(t.TempDir(), "lib64")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	_, obj := buildPatch(t, "fix_lib.c", lib, "", "-fPIC")
	e := NewEngine("/")
	o := opts(uuid1)
	o.Binary = filepath.Join(link, "libshared.so")
	if err := e.Patch(a.pid(), obj, o); err != nil {
		t.Fatalf("patch through %s: %v", o.Binary, err)
	}
	a.expect(t, "lib=200")
	applied, err := e.Info(a.pid())
	if err != nil || len(applied) != 1 || applied[0].Target != lib {
		t.Fatalf("info: %+v %v, want one patch on %s", applied, err, lib)
	}
	if err := e.Unpatch(a.pid(), uuid1, o); err != nil {
		t.Fatal(err)
	}
	a.expect(t, "lib=100")
}

// A function shorter than the jump (4 bytes: lea; ret) is patched through the padding
// after it; a second patch stacked on it must see that padding as it was, not the
// first patch's jump, and each unpatch restores the bytes below it.
func TestStackOnShortFunction(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "short.c")
	prog := `#include <stdio.h>
#include <unistd.h>
__attribute__((noipa)) int tiny(int x) { return x + 1; }
__attribute__((noipa)) int other(int x) { return x * 3; }
int main(void) { for (;;) { printf("tiny=%d other=%d\n", tiny(0), other(1)); fflush(stdout); usleep(10000); } }
`
	if err := os.WriteFile(src, []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "short")
	gcc(t, "-O2", src, "-o", bin)
	v := start(t, bin, nil)
	patch := func(ret int) *patchobj.Object {
		fix := filepath.Join(dir, fmt.Sprintf("fix%d.c", ret))
		code := fmt.Sprintf("#include <upatch.h>\nint tiny_v%d(int x) { return %d; }\nUPATCH_FUNC(tiny, tiny_v%d);\n"+
			"UPATCH_TARGET_BUILD_ID(%q);\n", ret, ret, ret, buildIDHex(t, bin))
		if err := os.WriteFile(fix, []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		obj := filepath.Join(dir, fmt.Sprintf("fix%d.o", ret))
		gcc(t, "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", includeDir(), fix, "-o", obj)
		b, err := os.ReadFile(obj)
		if err != nil {
			t.Fatal(err)
		}
		o, err := patchobj.ParseBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	e := NewEngine("/")
	if err := e.Patch(v.pid(), patch(2), opts(uuid1)); err != nil {
		t.Fatalf("first patch: %v", err)
	}
	v.expect(t, "tiny=2")
	if err := e.Patch(v.pid(), patch(3), opts(uuid2)); err != nil {
		t.Fatalf("patch stacked on a short function: %v", err)
	}
	v.expect(t, "tiny=3")
	if err := e.Unpatch(v.pid(), uuid2, opts(uuid2)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "tiny=2")
	if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "tiny=1")
}

// 8. A thread parked inside the target function: refused with EBUSY, the process
// unharmed; once the thread leaves, the patch succeeds.
func TestBusyFunctionRefused(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil)
	_, obj := buildPatch(t, "fix_park.c", bin, "")
	v.stdin.Write([]byte("park\n"))
	waitBlockedInRead(t, v.pid(), notStdin) // the thread blocked in park()
	e := NewEngine("/")
	o := opts(uuid1)
	o.Retries = 3
	err := e.Patch(v.pid(), obj, o)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("patch of a busy function: %v, want ErrBusy", err)
	}
	for _, want := range []string{`"park"`, "thread", "after 3 tries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if applied, _ := e.Info(v.pid()); len(applied) != 0 {
		t.Fatalf("busy patch left %+v in the process", applied)
	}
	v.alive(t)
	parked := threadCount(t, v.pid())
	v.stdin.Write([]byte("release\n"))
	// Released, the parker thread returns from park() and ends; a loaded machine
	// runs it late, so wait for it to be gone rather than for a while. Then a plain
	// patch (no waiting for frames) goes through.
	n := threadCount(t, v.pid())
	for end := time.Now().Add(settleBound); n >= parked && time.Now().Before(end); n = threadCount(t, v.pid()) {
		time.Sleep(5 * time.Millisecond)
	}
	if n >= parked {
		t.Fatalf("the parker thread did not end within %v of its release", settleBound)
	}
	if err := e.Patch(v.pid(), obj, o); err != nil {
		t.Fatalf("patch after the thread was released: %v", err)
	}
	v.alive(t)
}

// 9. A wrong build-id is refused; no build-id needs Force.
func TestBuildIDChecked(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil)
	e := NewEngine("/")
	_, wrong := buildPatch(t, "fix_greet.c", bin, "0123456789abcdef0123456789abcdef01234567")
	err := e.Patch(v.pid(), wrong, opts(uuid1))
	if !errors.Is(err, ErrBuildID) || !strings.Contains(err.Error(), "0123456789abcdef") {
		t.Fatalf("wrong build-id: %v", err)
	}
	_, none := buildPatch(t, "fix_greet.c", bin, "-")
	if err := e.Patch(v.pid(), none, opts(uuid1)); !errors.Is(err, ErrBuildID) {
		t.Fatalf("no build-id without force: %v", err)
	}
	var warned string
	o := opts(uuid1)
	o.Force, o.Warn = true, func(s string) { warned = s }
	if err := e.Patch(v.pid(), none, o); err != nil {
		t.Fatalf("no build-id with force: %v", err)
	}
	if !strings.Contains(warned, "build-id") {
		t.Errorf("no warning for a forced patch without build-id (got %q)", warned)
	}
	v.expect(t, "greet=2")
}

// 10. Stacked patches and LIFO unpatch.
func TestStackedPatchesLIFO(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil)
	_, p2 := buildPatch(t, "fix_greet.c", bin, "")
	_, p3 := buildPatch(t, "fix_greet3.c", bin, "")
	e := NewEngine("/")
	if err := e.Patch(v.pid(), p2, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=2")
	if err := e.Patch(v.pid(), p3, opts(uuid2)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=3")
	err := e.Unpatch(v.pid(), uuid1, opts(uuid1))
	if !errors.Is(err, ErrStacked) || !strings.Contains(err.Error(), uuid2) {
		t.Fatalf("out-of-order unpatch: %v, want ErrStacked naming %s", err, uuid2)
	}
	v.expect(t, "greet=3")
	applied, _ := e.Info(v.pid())
	if len(applied) != 2 || applied[0].UUID != uuid1 || applied[1].UUID != uuid2 || applied[1].Seq <= applied[0].Seq {
		t.Fatalf("info = %+v", applied)
	}
	if err := e.Unpatch(v.pid(), uuid2, opts(uuid2)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=2")
	if err := e.Unpatch(v.pid(), uuid1, opts(uuid1)); err != nil {
		t.Fatal(err)
	}
	v.expect(t, "greet=1")
}

// 11. The process killed during a patch attempt: a clean error, no hang.
func TestProcessKilledMidPatch(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil, "4")
	_, obj := buildPatch(t, "fix_rich.c", bin, "")
	e := NewEngine("/")
	testHookStopped = func(pid int) { syscall.Kill(pid, syscall.SIGKILL) }
	defer func() { testHookStopped = nil }()
	done := make(chan error, 1)
	go func() { done <- e.Patch(v.pid(), obj, opts(uuid1)) }()
	select {
	case err := <-done:
		if !errors.Is(err, ptrace.ErrExited) {
			t.Fatalf("patch of a killed process: %v, want ErrExited", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("patch of a killed process hangs")
	}
}

// A process that exited but is not reaped yet (as a worker killed while an operator
// runs patch --all, before its parent waits for it) is reported as exited, for both
// an explicit --binary and the main executable, not as a missing target.
func TestZombieIsExited(t *testing.T) {
	bin := buildVictim(t)
	_, obj := buildPatch(t, "fix_rich.c", bin, "")
	cmd := exec.Command(bin, "4")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer cmd.Wait()
	cmd.Process.Kill()
	// Not waited for: the child stays a zombie until the deferred Wait.
	for i := 0; ; i++ {
		st, err := proc.ThreadState(pid, pid)
		if err != nil {
			t.Fatal(err)
		}
		if st == 'Z' {
			break
		}
		if i > 200 {
			t.Fatalf("pid %d: state %c, want a zombie", pid, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e := NewEngine("/")
	for _, binary := range []string{bin, ""} {
		o := opts(uuid1)
		o.Binary = binary
		if err := e.Patch(pid, obj, o); !errors.Is(err, ptrace.ErrExited) {
			t.Errorf("patch of a zombie (binary %q): %v, want ErrExited", binary, err)
		}
	}
}

// 12. Malformed patch objects: a clear error and the process untouched.
func TestMalformedPatchRefused(t *testing.T) {
	bin := buildVictim(t)
	v := start(t, bin, nil)
	good, _ := buildPatch(t, "fix_greet.c", bin, "")
	raw, _ := os.ReadFile(good)
	for name, b := range map[string][]byte{
		"truncated": raw[:len(raw)/2],
		"garbage":   []byte(strings.Repeat("garbage!", 64)),
		"wrong machine": func() []byte {
			c := append([]byte(nil), raw...)
			c[18] = 0x28 // EM_ARM
			return c
		}(),
	} {
		if _, err := patchobj.ParseBytes(b); err == nil || !errors.Is(err, patchobj.ErrInvalid) {
			t.Errorf("%s: parse error %v, want ErrInvalid", name, err)
		}
	}
	_, missing := buildPatch(t, "fix_missing.c", bin, "-")
	o := opts(uuid1)
	o.Force = true
	err := NewEngine("/").Patch(v.pid(), missing, o)
	if err == nil || !strings.Contains(err.Error(), "no_such_symbol_anywhere") {
		t.Fatalf("missing symbol: %v", err)
	}
	if applied, _ := NewEngine("/").Info(v.pid()); len(applied) != 0 {
		t.Fatalf("failed patch left %+v", applied)
	}
	if anon := patchMappings(t, v.pid()); anon != 0 {
		t.Fatalf("failed patch left %d mappings", anon)
	}
	v.expect(t, "greet=1")
}
