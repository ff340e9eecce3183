package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/tests/testenv"
)

// BenchmarkUpstreamLuaHotPatch measures, in one run, syscare-build making the hot patch
// of the Lua fix against one plain rpmbuild -bb of the same spec and sources, both with
// two jobs; and the size of the patch object and of the patch RPM. Each iteration runs
// both twice, alternated, and keeps the faster of each: on a shared machine another
// build's burst otherwise decides the ratio.
func BenchmarkUpstreamLuaHotPatch(b *testing.B) {
	testenv.NeedE2E(b)
	needRoot(b)
	needBinaries(b)
	pkgs := buildLua(b)
	var plain, hot time.Duration
	var hp builderRun
	for i := 0; i < b.N; i++ {
		var bestPlain, bestHot time.Duration
		for round := 0; round < 2; round++ {
			start := time.Now()
			out, err := exec.Command("rpmbuild", "-bb", "--nodeps", "--define", "_topdir "+pkgs.top, pkgs.spec).CombinedOutput()
			if err != nil {
				b.Fatalf("rpmbuild -bb: %v\n%s", err, out)
			}
			if d := time.Since(start); round == 0 || d < bestPlain {
				bestPlain = d
			}
			hp = hotPatch(b, pkgs)
			if round == 0 || hp.elapsed < bestHot {
				bestHot = hp.elapsed
			}
		}
		plain += bestPlain
		hot += bestHot
	}
	dir, meta := patchDir(b, hp.rpm)
	obj, err := os.Stat(filepath.Join(dir, meta.Entities[0].File))
	if err != nil {
		b.Fatal(err)
	}
	rpm, err := os.Stat(hp.rpm)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(plain.Seconds()/float64(b.N), "rpmbuild-s")
	b.ReportMetric(hot.Seconds()/float64(b.N), "hotpatch-s")
	b.ReportMetric(hot.Seconds()/plain.Seconds(), "ratio")
	b.ReportMetric(float64(obj.Size()), "patch-obj-bytes")
	b.ReportMetric(float64(rpm.Size()), "patch-rpm-bytes")
}

// BenchmarkUpstreamLuaDiff measures the differ's throughput (MB/s of original plus
// patched object) on Lua's 34 translation units (lua.c and luac.c included) compiled as syscare-build compiles them:
// the fixed lutf8lib.c against its original, every other unit against itself (the no
// change path still correlates and compares every section and symbol).
func BenchmarkUpstreamLuaDiff(b *testing.B) {
	testenv.NeedE2E(b)
	pairs := luaObjects(b)
	var total int64
	for _, p := range pairs {
		total += int64(len(p.orig) + len(p.patched))
	}
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		changed := 0
		for _, p := range pairs {
			r, err := diff.Diff(bytes.NewReader(p.orig), bytes.NewReader(p.patched), diff.Options{})
			if errors.Is(err, diff.ErrNoChange) {
				continue
			}
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			if got := r.Changed(); !slices.Equal(got, []string{"iter_aux", "iter_codes"}) && !slices.Equal(got, []string{"iter_codes", "iter_aux"}) {
				b.Fatalf("%s: changed %q", p.name, got)
			}
			if _, err := r.Object(); err != nil {
				b.Fatalf("%s: patch object: %v", p.name, err)
			}
			changed++
		}
		if changed != 1 {
			b.Fatalf("%d objects changed, want 1 (lutf8lib.o)", changed)
		}
	}
	b.ReportMetric(float64(len(pairs)), "objects")
	b.ReportMetric(float64(total)/1e6, "MB/op")
}

type objPair struct {
	name          string
	orig, patched []byte
}

// luaObjects unpacks the upstream tarball, compiles every unit of src/ with the flags of
// the spec's build plus the ones the compiler capture adds, applies the fix and
// compiles lutf8lib.c again.
func luaObjects(b *testing.B) []objPair {
	b.Helper()
	orig := luaOrig(b)
	dir := b.TempDir()
	if out, err := exec.Command("tar", "-xzf", orig, "-C", dir).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v\n%s", err, out)
	}
	src := filepath.Join(dir, "lua-"+luaVersion, "src")
	units, _ := filepath.Glob(filepath.Join(src, "*.c"))
	if len(units) == 0 {
		b.Fatal("no sources in the tarball")
	}
	flags := []string{"-std=gnu99", "-O2", "-g", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX",
		"-ffunction-sections", "-fdata-sections", "-gdwarf", "-fno-lto", "-c"}
	compile := func(c, o string) error {
		out, err := exec.Command("gcc", append(slices.Clone(flags), "-o", o, c)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("gcc %s: %w\n%s", filepath.Base(c), err, out)
		}
		return nil
	}
	errs := make([]error, len(units))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for i, c := range units {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = compile(c, strings.TrimSuffix(c, ".c")+".o")
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	patchCmd := exec.Command("patch", "-p1", "-s", "-i", filepath.Join(mustAbs(b, "lua"), fixPatch))
	patchCmd.Dir = filepath.Dir(src)
	if out, err := patchCmd.CombinedOutput(); err != nil {
		b.Fatalf("patch: %v\n%s", err, out)
	}
	fixed := filepath.Join(src, "lutf8lib.fixed.o")
	if err := compile(filepath.Join(src, "lutf8lib.c"), fixed); err != nil {
		b.Fatal(err)
	}
	var pairs []objPair
	for _, c := range units {
		o := strings.TrimSuffix(c, ".c") + ".o"
		data, err := os.ReadFile(o)
		if err != nil {
			b.Fatal(err)
		}
		p := objPair{name: filepath.Base(o), orig: data, patched: data}
		if p.name == "lutf8lib.o" {
			if p.patched, err = os.ReadFile(fixed); err != nil {
				b.Fatal(err)
			}
		}
		pairs = append(pairs, p)
	}
	return pairs
}

func mustAbs(b *testing.B, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		b.Fatal(err)
	}
	return a
}
