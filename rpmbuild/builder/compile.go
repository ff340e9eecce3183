package builder

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/diff"
)

// tu is one recorded translation unit.
type tu struct {
	idx     int
	rec     capture.Record
	orig    string            // saved original object
	patched string            // rebuilt object ("" when unchanged)
	hashes  map[string]string // dependency path -> sha256 at the original build
}

// buildOriginal runs %build with the compiler captured and saves every object.
func (b *build) buildOriginal(ctx context.Context) (string, error) {
	var err error
	bind := !b.opts.NoBind && capture.CanBind()
	if b.cap, err = capture.New(filepath.Join(b.work, "capture"), b.opts.Wrapper, bind); err != nil {
		return "", fmt.Errorf("%w: %w", ErrMissingTool, err)
	}
	args := b.rpmbuildArgs("-bc", "--short-circuit")
	fmt.Fprintf(b.logw, "+ [capture bind=%v] rpmbuild %s\n", bind, strings.Join(args, " "))
	cmd := b.cap.Command(ctx, "rpmbuild", args...)
	cmd.Dir = b.top
	cmd.Stdout, cmd.Stderr = b.logw, b.logw
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%%build of %s: %w", b.src.NVR(), err)
	}
	installStart := time.Now()
	if err := b.installShipped(ctx); err != nil {
		return "", err
	}
	installTime := time.Since(installStart)
	recs, err := b.cap.Records()
	if err != nil {
		return "", err
	}
	// The last compile of an object wins (a package may build one object twice).
	last := map[string]int{}
	for i, r := range recs {
		if r.Kind == capture.KindCompile {
			last[r.Object] = i
		}
	}
	cache := map[string]string{}
	origDir := filepath.Join(b.work, "orig")
	if err := os.MkdirAll(origDir, 0o755); err != nil {
		return "", err
	}
	for i, r := range recs {
		if r.Kind != capture.KindCompile || last[r.Object] != i {
			continue
		}
		// configure-style probes compile a file and delete it again: nothing to patch.
		if !exists(r.Source) || !exists(r.Object) {
			fmt.Fprintf(b.logw, "%s: gone after the build (a probe); not tracked\n", r.Source)
			continue
		}
		t := &tu{idx: len(b.tus), rec: r, hashes: map[string]string{}}
		t.orig = filepath.Join(origDir, fmt.Sprintf("%d-%s", t.idx, filepath.Base(r.Object)))
		if err := copyFile(r.Object, t.orig); err != nil {
			return "", fmt.Errorf("save original object: %w", err)
		}
		deps := append([]string{r.Source}, r.Deps...)
		for _, d := range deps {
			t.hashes[d] = hashCached(cache, d)
		}
		b.tus = append(b.tus, t)
	}
	if len(b.tus) == 0 {
		return "", errNoRecords
	}
	b.res.Total = len(b.tus)
	return fmt.Sprintf("%d objects; %%install and %%files %.2fs", len(b.tus), installTime.Seconds()), nil
}

func hashCached(cache map[string]string, path string) string {
	if h, ok := cache[path]; ok {
		return h
	}
	h := hashFile(path)
	cache[path] = h
	return h
}

func hashFile(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "missing"
	}
	defer f.Close()
	s := sha256.New()
	if _, err := io.Copy(s, f); err != nil {
		return "unreadable"
	}
	return hex.EncodeToString(s.Sum(nil))
}

// ChangedTUs returns the units whose source or any file they included differs from
// the hashes recorded at the original build.
func changedTUs(tus []*tu) []*tu {
	cache := map[string]string{}
	var out []*tu
	for _, t := range tus {
		for d, h := range t.hashes {
			if hashCached(cache, d) != h {
				out = append(out, t)
				break
			}
		}
	}
	return out
}

// buildPatched applies the patches and compiles again only the changed units.
func (b *build) buildPatched(ctx context.Context) (string, error) {
	if err := b.applyPatches(ctx, b.buildDir); err != nil {
		return "", err
	}
	changed := changedTUs(b.tus)
	if len(changed) == 0 {
		return "", fmt.Errorf("%w: the patches change no file that any compiled unit reads", diff.ErrNoChange)
	}
	dir := filepath.Join(b.work, "patched")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var mu sync.Mutex
	var firstErr error
	b.counted.total.Store(int64(len(changed)))
	sem := make(chan struct{}, b.opts.Jobs)
	var wg sync.WaitGroup
	for _, t := range changed {
		wg.Add(1)
		sem <- struct{}{}
		go func(t *tu) {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := b.recompile(ctx, t)
			b.objectDone()
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintf(b.logw, "+ (cd %s && %s)\n%s", t.rec.Dir, strings.Join(t.rec.Args, " "), out)
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("recompile %s: %w", t.rec.Source, err)
			}
		}(t)
	}
	wg.Wait()
	if firstErr != nil {
		return "", firstErr
	}
	for _, t := range changed {
		t.patched = filepath.Join(dir, fmt.Sprintf("%d-%s", t.idx, filepath.Base(t.rec.Object)))
		if err := copyFile(t.rec.Object, t.patched); err != nil {
			return "", err
		}
	}
	b.res.Rebuilt = len(changed)
	return fmt.Sprintf("%d of %d objects rebuilt", len(changed), len(b.tus)), nil
}

// recompile runs a recorded compile command again, outside the namespace, with the real compiler.
func (b *build) recompile(ctx context.Context, t *tu) ([]byte, error) {
	cc := b.cap.RealCC
	if t.rec.Lang == "c++" {
		cc = b.cap.RealCXX
	}
	if cc == "" {
		return nil, fmt.Errorf("%w: no C++ compiler (g++)", ErrMissingTool)
	}
	cmd := exec.CommandContext(ctx, cc, t.rec.Args...)
	cmd.Args[0] = cc
	cmd.Dir = t.rec.Dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// originals maps each rebuilt object's path to its saved original.
func (b *build) originals() map[string]string {
	m := map[string]string{}
	for _, t := range b.tus {
		m[t.rec.Object] = t.orig
	}
	return m
}
