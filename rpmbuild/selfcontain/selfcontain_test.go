package selfcontain

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/patchobj"
	"github.com/syscare/syscare/runtime/upatch"
)

const target = `#include <stdio.h>
#include <unistd.h>
int counter;
__thread int tls = 41;
static __attribute__((noipa)) int scale(int x) { return x * 2; }
__attribute__((noipa)) int compute(int x) { counter++; return scale(x) + tls; }
int main(void) { for (;;) { printf("%d\n", compute(1)); fflush(stdout); usleep(5000); } }
`

// The fix calls the target's static scale, uses its global counter and its TLS
// variable, and libc's abs, which stays dynamic.
const fix = `#include <stdlib.h>
#include <upatch.h>
extern int counter;
extern __thread int tls;
int scale(int);
int compute_v2(int x) { counter++; return abs(-scale(x)) + tls + 1000 + (counter > 1); }
UPATCH_FUNC(compute, compute_v2);
`

func cc(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %v: %v\n%s", args, err, out)
	}
}

func include() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "runtime", "include")
}

// A hand-written patch made self-contained from the debug file applies to the
// stripped program, with no debuginfo anywhere the loader looks.
func TestMakeAppliesToStrippedTarget(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "prog.c"), []byte(target), 0o644)
	os.WriteFile(filepath.Join(dir, "fix.c"), []byte(fix), 0o644)
	prog, debug := filepath.Join(dir, "prog"), filepath.Join(dir, "prog.debug")
	cc(t, "-O2", "-g", "-Wl,--build-id", "-o", prog, filepath.Join(dir, "prog.c"))
	if err := SplitDebug(context.Background(), prog, debug); err != nil {
		t.Fatal(err)
	}
	hand := filepath.Join(dir, "fix.o")
	cc(t, "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), "-o", hand, filepath.Join(dir, "fix.c"))
	out := filepath.Join(dir, "fix-sc.o")
	entries, err := Make(context.Background(), hand, debug, out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range entries {
		got[e.Key.Name] = true
	}
	for _, want := range []string{"compute", "scale", "counter", "tls"} {
		if !got[want] {
			t.Errorf("no offset for %s: %+v", want, entries)
		}
	}
	if got["abs"] {
		t.Errorf("libc's abs resolved in the program: %+v", entries)
	}
	b, _ := os.ReadFile(out)
	obj, err := patchobj.ParseBytes(b)
	if err != nil || !obj.SelfContained() || obj.TargetBuildID == nil {
		t.Fatalf("made object: %v", err)
	}

	cmd := exec.Command(prog)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	lines := make(chan string, 4096)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case l := <-lines:
				if l == want {
					return
				}
			case <-deadline:
				t.Fatalf("never printed %q", want)
			}
		}
	}
	waitFor("43")
	e := upatch.NewEngine(t.TempDir())
	if err := e.Patch(cmd.Process.Pid, obj, upatch.Options{UUID: "selfcontain-test"}); err != nil {
		t.Fatal(err)
	}
	waitFor("1044")
	if err := e.Unpatch(cmd.Process.Pid, "selfcontain-test", upatch.Options{UUID: "selfcontain-test"}); err != nil {
		t.Fatal(err)
	}
	waitFor("43")

	// Refusals: another build's object, an object that has offsets already, a function
	// the target lacks.
	for name, c := range map[string]struct {
		in, want string
	}{
		"other build-id": {writeFix(t, dir, "wrongid", fix+"UPATCH_TARGET_BUILD_ID(\"0123abcd\");\n"), "is for build-id 0123abcd"},
		"already":        {out, "already carries .upatch.offsets"},
		"no such":        {writeFix(t, dir, "nosuch", "#include <upatch.h>\nint n2(void) { return 1; }\nUPATCH_FUNC(no_such_function, n2);\n"), `replaced function "no_such_function"`},
	} {
		_, err := Make(context.Background(), c.in, debug, filepath.Join(dir, name+".out"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		if _, serr := os.Stat(filepath.Join(dir, name+".out")); serr == nil {
			t.Errorf("%s: an output was written", name)
		}
	}
}

func writeFix(t *testing.T, dir, name, src string) string {
	t.Helper()
	c, o := filepath.Join(dir, name+".c"), filepath.Join(dir, name+".o")
	os.WriteFile(c, []byte(src), 0o644)
	cc(t, "-c", "-O2", "-ffunction-sections", "-fdata-sections", "-I", include(), "-o", o, c)
	return o
}
