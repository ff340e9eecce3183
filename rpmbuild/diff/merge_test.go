package diff

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// Two translation units each with a static `counter` and a static `step`: their patch
// objects are merged with `ld -r`, as the pipeline does per target ELF; the aliases keep
// the two statics apart and the merged object still parses.
func TestMergedObjectsParse(t *testing.T) {
	tu := func(name, fn string, delta int) (string, string) {
		orig := fmt.Sprintf(`static int counter;
static __attribute__((noinline)) int step(int x) { return x + %d; }
int %s(void) { counter = step(counter); return counter; }
`, delta, fn)
		fixed := fmt.Sprintf(`static int counter;
static __attribute__((noinline)) int step(int x) { return x + %d; }
int %s(void) { counter = step(counter) * 2; return counter; }
`, delta, fn)
		return orig, fixed
	}
	dir := t.TempDir()
	var objs []string
	for i, fn := range []string{"tick", "tock"} {
		o, f := tu("tu", fn, i+1)
		ob, pb := pair(t, fmt.Sprintf("tu%d", i), o, f, "-fPIE")
		loc := locatorFunc(func(name, file string, isFunc bool) (uint64, error) {
			// the target holds two statics of each name, one per file
			if name == "counter" || name == "step" {
				return uint64(i + 1), nil
			}
			return 0, nil
		})
		r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{Locator: loc, AliasPrefix: fmt.Sprintf("__tu%d_", i)})
		if err != nil {
			t.Fatalf("Diff tu%d: %v", i, err)
		}
		b, err := r.Object()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("p%d.o", i))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, p)
	}
	merged := filepath.Join(dir, "merged.o")
	if out, err := exec.Command("ld", append([]string{"-r", "-o", merged}, objs...)...).CombinedOutput(); err != nil {
		t.Fatalf("ld -r: %v\n%s", err, out)
	}
	b, err := os.ReadFile(merged)
	if err != nil {
		t.Fatal(err)
	}
	po, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatalf("patchobj.Parse of the merged object: %v", err)
	}
	got := map[string]bool{}
	for _, f := range po.Funcs {
		got[f.OldName] = true
	}
	if len(po.Funcs) != 2 || !got["tick"] || !got["tock"] {
		t.Errorf("merged object replaces %+v, want tick and tock", po.Funcs)
	}
	for i := 0; i < 2; i++ {
		for _, name := range []string{"counter", "step"} {
			alias := fmt.Sprintf("__tu%d_%s", i, name)
			ts := po.Target(alias)
			if ts.Name != name || ts.Pos != uint64(i+1) {
				t.Errorf("alias %s binds %+v, want %s at position %d", alias, ts, name, i+1)
			}
		}
	}
}

type locatorFunc func(name, file string, isFunc bool) (uint64, error)

func (f locatorFunc) Pos(name, file string, isFunc bool) (uint64, error) {
	return f(name, file, isFunc)
}

// A changed static function is replaced at the position the Locator gives.
func TestLocatorPosition(t *testing.T) {
	orig := "static __attribute__((noinline)) int s(int x) { return x + 1; }\nint pub(int x) { return s(x) * 2; }\n"
	fixed := "static __attribute__((noinline)) int s(int x) { return x + 9; }\nint pub(int x) { return s(x) * 2; }\n"
	ob, pb := pair(t, "loc", orig, fixed, "-fPIC")
	var asked []string
	loc := locatorFunc(func(name, file string, isFunc bool) (uint64, error) {
		asked = append(asked, fmt.Sprintf("%s/%s/%v", name, file, isFunc))
		return 3, nil
	})
	r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{Locator: loc})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Object()
	if err != nil {
		t.Fatal(err)
	}
	po, err := patchobj.ParseBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(po.Funcs) != 1 || po.Funcs[0].OldPos != 3 || !strings.HasPrefix(po.Funcs[0].OldName, "s") {
		t.Errorf("funcs %+v, want s at position 3", po.Funcs)
	}
	if len(asked) == 0 || !strings.Contains(asked[0], "/loc.c/true") {
		t.Errorf("locator asked %q, want the file loc.c and isFunc", asked)
	}
	// A failing locator is an error, not a silent position 0.
	bad := locatorFunc(func(string, string, bool) (uint64, error) { return 0, errors.New("no symtab") })
	r2, _ := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{Locator: bad})
	if _, err := r2.Object(); err == nil || !strings.Contains(err.Error(), "no symtab") {
		t.Errorf("Object with failing locator: %v", err)
	}
}

func TestRunDiff(t *testing.T) {
	ob, pb := pair(t, "a", caseNamed("changed-function").orig, caseNamed("changed-function").fixed, "-fPIE")
	dir := t.TempDir()
	op, pp, out := filepath.Join(dir, "o.o"), filepath.Join(dir, "p.o"), filepath.Join(dir, "patch.o")
	os.WriteFile(op, ob, 0o644)
	os.WriteFile(pp, pb, 0o644)
	var stdout, stderr bytes.Buffer
	if err := RunDiff([]string{"-o", out, op, pp}, &stdout, &stderr); err != nil {
		t.Fatalf("RunDiff: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "CHANGED func    add\n") || !strings.Contains(stdout.String(), "changed functions: add\n") {
		t.Errorf("dump:\n%s", stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := patchobj.ParseBytes(b); err != nil {
		t.Errorf("written object: %v", err)
	}
	err = RunDiff([]string{op, op}, &stdout, &stderr)
	if !errors.Is(err, ErrNoChange) {
		t.Errorf("RunDiff of identical objects: %v, want ErrNoChange", err)
	}
	stdout.Reset()
	if err := RunDiff([]string{"-json", op, pp}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if rp, err := ParseReport(stdout.Bytes()); err != nil || len(rp.Changed) != 1 || rp.Changed[0].Name != "add" {
		t.Errorf("-json report %+v, %v:\n%s", rp, err, stdout.String())
	}
	if err := RunDiff([]string{op}, &stdout, &stderr); err == nil {
		t.Error("RunDiff with one argument succeeded")
	}
}

// The dump is stable: diffing twice gives the same text.
func TestDumpStable(t *testing.T) {
	c := caseNamed("new-static-helper")
	ob, pb := pair(t, c.file, c.orig, c.fixed, "-fPIE")
	r1, err1 := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	r2, err2 := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if r1.String() != r2.String() {
		t.Errorf("dumps differ:\n%s\n%s", r1, r2)
	}
	b1, _ := r1.Object()
	b2, _ := r2.Object()
	if !bytes.Equal(b1, b2) {
		t.Error("emitted objects differ between two runs")
	}
}

func FuzzDiff(f *testing.F) {
	c := caseNamed("cold-split") // strings, a cold part, several relocation kinds
	ob, pb := pair(f, c.file, c.orig, c.fixed, "-fPIE")
	f.Add(pb, 0, byte(0))
	f.Add(pb, 0x40, byte(0xff))
	f.Add(pb, len(pb)-100, byte(7))
	f.Fuzz(func(t *testing.T, data []byte, at int, v byte) {
		if at >= 0 && at < len(data) {
			data = append([]byte(nil), data...)
			data[at] ^= v
		}
		r, err := Diff(bytes.NewReader(ob), bytes.NewReader(data), Options{})
		if err == nil {
			_, _ = r.Object()
			_ = r.String()
		}
		_, _ = Diff(bytes.NewReader(data), bytes.NewReader(ob), Options{})
	})
}

// Deterministic corruption of every header field region: Diff must return, not panic.
func TestCorruptObjectsDoNotPanic(t *testing.T) {
	c := caseNamed("cold-split")
	ob, pb := pair(t, c.file, c.orig, c.fixed, "-fPIE")
	for i := 0; i < len(pb); i += 7 {
		for _, v := range []byte{0xff, 0x80, 0x01} {
			d := append([]byte(nil), pb...)
			d[i] ^= v
			r, err := Diff(bytes.NewReader(ob), bytes.NewReader(d), Options{})
			if err == nil {
				_, _ = r.Object()
			}
		}
	}
}

// BenchmarkDiff measures differ throughput on a generated translation unit of 2000
// functions with one of them changed (MB/s counts both objects).
func BenchmarkDiff(b *testing.B) {
	gen := func(changed int) string {
		var s strings.Builder
		s.WriteString("#include <stdio.h>\nstatic int state[64];\n")
		for i := 0; i < 2000; i++ {
			k := i
			if i == changed {
				k = i + 1
			}
			fmt.Fprintf(&s, "int fn%d(int x) { static int calls; calls++; if (x > %d) printf(\"fn%d %%d\\n\", x); state[x & 63] += %d; return x * %d + calls; }\n", i, k, i, i, k)
		}
		return s.String()
	}
	ob, pb := pair(b, "big", gen(-1), gen(1000), "-fPIE")
	b.SetBytes(int64(len(ob) + len(pb)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := Diff(bytes.NewReader(ob), bytes.NewReader(pb), Options{})
		if err != nil {
			b.Fatal(err)
		}
		if got := r.Changed(); len(got) != 1 || got[0] != "fn1000" {
			b.Fatalf("changed %q", got)
		}
		if _, err := r.Object(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(ob)+len(pb))/1e6, "MB/op")
}
