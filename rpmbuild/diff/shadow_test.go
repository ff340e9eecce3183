package diff

import (
	"bufio"
	"bytes"
	"fmt"
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

// upatchHeader is runtime/include/upatch.h of this tree.
func upatchHeader() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "runtime", "include", "upatch.h")
}

// The way a refused layout change points to: the fix keeps the structure and keeps
// its new per-object state in a shadow variable (upatch.h, the marker that the data
// lives beside the objects). The builder takes it as any other change; the patch
// reaches the table through the one symbol the loader binds. The same source still
// builds into a plain program, where the shadow calls answer NULL.
func TestShadowVariableFixBuilds(t *testing.T) {
	orig := `#include <stdio.h>
struct conn { int id; int bytes; };
__attribute__((noipa)) int serve(struct conn *c) { c->bytes++; return c->bytes; }
int main(void) { struct conn c = { 1, 0 }; serve(&c); printf("%d\n", serve(&c)); return 0; }
`
	fixed := fmt.Sprintf(`#include <stdio.h>
#include %q
struct conn { int id; int bytes; };
struct conn_extra { unsigned long requests; };
__attribute__((noipa)) int serve(struct conn *c)
{
	struct conn_extra *x = upatch_shadow_get_or_alloc(c, 1, sizeof *x, 0, 0, 0);
	c->bytes++;
	if (!x)
		return c->bytes;
	return c->bytes + 100 * (int)++x->requests;
}
int main(void) { struct conn c = { 1, 0 }; serve(&c); printf("%%d\n", serve(&c)); return 0; }
`, upatchHeader())
	ob, pb := pair(t, "shadowfix", orig, fixed, "-fPIE")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{AliasPrefix: "__p_"})
	if err != nil {
		t.Fatalf("a fix that attaches its new state with a shadow variable: %v", err)
	}
	if got := r.Changed(); len(got) != 1 || got[0] != "serve" {
		t.Fatalf("changed %q, want [serve]\n%s", got, r)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	o, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	var undefined []string
	for _, s := range o.Symbols {
		if !s.Defined() && s.Name != "" {
			undefined = append(undefined, s.Name)
		}
	}
	if !strings.Contains(strings.Join(undefined, " "), "__upatch_shadow_table") {
		t.Fatalf("the patch leaves %q undefined, want the shadow table among them", undefined)
	}

	// The fixed source as a plain program: no table, the old behaviour.
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "plain.c"), filepath.Join(dir, "plain")
	if err := os.WriteFile(src, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-O2", src, "-o", bin).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil || strings.TrimSpace(string(out)) != "2" {
		t.Fatalf("plain build of the fix: %q, %v; want 2", out, err)
	}
}

// The patch the differ made of a shadow-variable fix, applied to the running
// original: each connection gains a request counter while the patch is in, and the
// program serves as before once it is removed, the table gone with it.
func TestShadowVariableFixOnRunningProgram(t *testing.T) {
	orig := `#include <stdio.h>
#include <unistd.h>
struct conn { int id; int bytes; };
__attribute__((noipa)) void serve(struct conn *c) { c->bytes++; printf("conn %d bytes %d\n", c->id, c->bytes); fflush(stdout); }
int main(void)
{
	struct conn cs[3] = { { 1, 0 }, { 2, 0 }, { 3, 0 } };
	for (;;) {
		for (int i = 0; i < 3; i++)
			serve(&cs[i]);
		usleep(5000);
	}
}
`
	fixed := strings.Replace(orig, `__attribute__((noipa)) void serve(struct conn *c) { c->bytes++; printf("conn %d bytes %d\n", c->id, c->bytes); fflush(stdout); }`,
		fmt.Sprintf(`#include %q
struct conn_extra { unsigned long requests; };
__attribute__((noipa)) void serve(struct conn *c)
{
	struct conn_extra *x = upatch_shadow_get_or_alloc(c, 1, sizeof *x, 0, 0, 0);
	c->bytes++;
	if (x)
		printf("conn %%d bytes %%d requests %%lu\n", c->id, c->bytes, ++x->requests);
	else
		printf("conn %%d bytes %%d\n", c->id, c->bytes);
	fflush(stdout);
}`, upatchHeader()), 1)
	od, pd := t.TempDir(), t.TempDir()
	ob, pb := compile(t, od, "server", orig, "-fPIE"), compile(t, pd, "server", fixed, "-fPIE")
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{AliasPrefix: "__p_"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	obj, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(od, "server")
	objs, _ := filepath.Glob(filepath.Join(od, "*.o"))
	if out, err := exec.Command("gcc", append([]string{"-pie", "-o", bin}, objs...)...).CombinedOutput(); err != nil {
		t.Fatalf("link: %v\n%s", err, out)
	}

	cmd := exec.Command(bin)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // the test reads only what it waits for
			}
		}
		close(lines)
	}()
	wait := func(what string, ok func(string) bool) {
		t.Helper()
		deadline := time.After(30 * time.Second) // a hang guard: lines come every 5 ms
		for {
			select {
			case l, open := <-lines:
				if !open {
					t.Fatalf("server exited waiting for %s", what)
				}
				if ok(l) {
					return
				}
			case <-deadline:
				t.Fatalf("no %s", what)
			}
		}
	}
	plain := func(l string) bool { return strings.HasPrefix(l, "conn ") && !strings.Contains(l, "requests") }
	wait("output", plain)

	e := upatch.NewEngine("/")
	// The server's thread is inside serve() whenever it prints: on a loaded machine a
	// few quick retries can all find it there. Wait for it to return, as the helper does.
	o := upatch.Options{UUID: "diff-shadow", Force: true, RetryDelay: 5 * time.Millisecond, Timeout: 30 * time.Second}
	if err := e.Patch(cmd.Process.Pid, obj, o); err != nil {
		t.Fatal(err)
	}
	wait("a request counter", func(l string) bool { return strings.HasSuffix(l, " requests 20") })
	if n := tableSized(t, cmd.Process.Pid); n != 1 {
		t.Fatalf("%d anonymous mappings of the shadow table's size under the patch, want 1", n)
	}
	if err := e.Unpatch(cmd.Process.Pid, o.UUID, o); err != nil {
		t.Fatal(err)
	}
	// Drain what was buffered under the patch, then the old lines again.
	wait("the old output", plain)
	wait("the old output", plain)
	if n := tableSized(t, cmd.Process.Pid); n != 0 {
		t.Fatalf("%d anonymous mappings of the shadow table's size left after unpatch", n)
	}
}

// tableSized counts the anonymous mappings of pid of at least the shadow table's
// size (4 MiB and its head): the program itself maps none.
func tableSized(t *testing.T, pid int) int {
	t.Helper()
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(maps), "\n") {
		f := strings.Fields(l)
		if len(f) != 5 || f[4] != "0" || f[1] != "rw-p" {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err == nil && hi-lo > 4<<20 {
			n++
		}
	}
	return n
}
