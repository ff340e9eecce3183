package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// plantLinks puts, for the next few seconds, a symlink at every name a failure log
// of patch name could take in dir, each pointing at a file that must not change.
func plantLinks(t *testing.T, dir, name string) (victim string) {
	t.Helper()
	victim = filepath.Join(t.TempDir(), "root-owned")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	for s := now - 1; s <= now+5; s++ {
		for _, suffix := range []string{"", "-2", "-3"} {
			p := filepath.Join(dir, fmt.Sprintf("syscare-build-%s-%d%s.log", name, s, suffix))
			if err := os.Symlink(victim, p); err != nil {
				t.Fatal(err)
			}
		}
		// A dangling link too: O_CREAT alone would create its target.
		if err := os.Symlink(filepath.Join(dir, fmt.Sprintf("created-%d", s)), filepath.Join(dir, fmt.Sprintf("syscare-build-%s-%d-4.log", name, s))); err != nil {
			t.Fatal(err)
		}
	}
	return victim
}

func checkVictim(t *testing.T, dir, victim string) {
	t.Helper()
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("file behind a planted symlink was written: %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "created-*")); len(m) != 0 {
		t.Fatalf("a dangling symlink's target was created: %v", m)
	}
}

// TestFailureLogNeverFollowsSymlinks: the log of a failed build lands in the output
// directory under a fresh name; links other users planted at the predictable names
// are skipped, not followed, and two failures in the same second get two logs.
func TestFailureLogNeverFollowsSymlinks(t *testing.T) {
	out := t.TempDir()
	os.Chmod(out, 0o777|os.ModeSticky) // a shared directory, like /tmp
	victim := plantLinks(t, out, "HP1")
	notRPM := filepath.Join(t.TempDir(), "source.src.rpm")
	os.WriteFile(notRPM, []byte("this is a text file\n"), 0o644)
	patch := filepath.Join(t.TempDir(), "fix.patch")
	os.WriteFile(patch, []byte("--- a\n+++ b\n"), 0o644)

	var logs []string
	for i := 0; i < 2; i++ {
		_, err := Build(context.Background(), Options{PatchName: "HP1", Source: notRPM, Debuginfo: []string{notRPM},
			Patches: []string{patch}, OutputDir: out, WorkDir: t.TempDir()})
		var f *Failure
		if !errors.As(err, &f) {
			t.Fatalf("build of a text file: %v, want a Failure", err)
		}
		if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "not an RPM package") {
			t.Fatalf("error %q does not say the source is not an RPM", err)
		}
		st, lerr := os.Lstat(f.LogPath)
		if lerr != nil || !st.Mode().IsRegular() || filepath.Dir(f.LogPath) != out {
			t.Fatalf("log %s: %v %v", f.LogPath, st, lerr)
		}
		if b, _ := os.ReadFile(f.LogPath); !strings.Contains(string(b), "not an RPM package") {
			t.Fatalf("log %s lacks the error:\n%s", f.LogPath, b)
		}
		logs = append(logs, f.LogPath)
	}
	if logs[0] == logs[1] {
		t.Fatalf("two failed builds share the log %s", logs[0])
	}
	checkVictim(t, out, victim)
}

// TestFailureLogFallsBackToPrivateDir: without a usable output directory the log stays
// in the build's private work directory, alone.
func TestFailureLogFallsBackToPrivateDir(t *testing.T) {
	base := t.TempDir()
	_, err := Build(context.Background(), Options{PatchName: "HP1", OutputDir: filepath.Join(base, "missing"), WorkDir: base})
	var f *Failure
	if !errors.As(err, &f) {
		t.Fatalf("build without inputs: %v", err)
	}
	dir := filepath.Dir(f.LogPath)
	if filepath.Dir(dir) != base || !strings.HasPrefix(filepath.Base(dir), "syscare-build-HP1-") {
		t.Fatalf("log %s not in the private work directory", f.LogPath)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("work directory %s: %v %v", dir, st, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("work directory keeps %d entries, want the log alone", len(ents))
	}
}

// TestCopyFileReplacesPlantedSymlink: outputs (the patch RPMs) replace whatever sits at
// their name; a symlink there is replaced, its target untouched.
func TestCopyFileReplacesPlantedSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "root-owned")
	os.WriteFile(victim, []byte("precious\n"), 0o644)
	src := filepath.Join(dir, "src.rpm")
	os.WriteFile(src, []byte("rpm bytes"), 0o644)
	dst := filepath.Join(dir, "patch.rpm")
	os.Symlink(victim, dst)
	if err := copyFile(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("symlink followed: %q", b)
	}
	if st, err := os.Lstat(dst); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("%s: %v %v", dst, st, err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "rpm bytes" {
		t.Fatalf("copy: %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(m) != 0 {
		t.Fatalf("temp files left: %v", m)
	}
}

// TestUnsafeWorkDirRefused: a work directory parent that another user owns, or that
// others may write without the sticky bit, is refused before anything is created in it.
func TestUnsafeWorkDirRefused(t *testing.T) {
	open := t.TempDir()
	os.Chmod(open, 0o777)
	theirs := t.TempDir()
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	sticky := t.TempDir()
	os.Chmod(sticky, 0o777|os.ModeSticky)
	for dir, want := range map[string]string{open: "writable by other users", theirs: "belongs to uid 65534", sticky: ""} {
		_, err := Build(context.Background(), Options{PatchName: "HP1", WorkDir: dir, OutputDir: t.TempDir()})
		if want == "" {
			if err == nil || strings.Contains(err.Error(), "workdir") {
				t.Errorf("%s: %v, want the build to start (and fail on its inputs)", dir, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a refusal saying %q", dir, err, want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: created %v", dir, ents)
		}
	}
}
