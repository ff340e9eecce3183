// Package debsrc fetches, for tests, the upstream (orig) tarball of a Debian 12 source
// package with apt-get source through a private apt configuration holding one deb-src
// line: the system's sources and package caches are left alone, apt checks the files
// against the signed Sources index, and the tarball is checked against a known sha256.
// Tarballs are fetched at test time and never committed; a verified one is kept in the
// tests' cache (testenv.CacheDir) for later runs.
package debsrc

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// SourcesList is the only apt source the private configuration has.
const SourcesList = "deb-src http://deb.debian.org/debian bookworm main\n"

// Orig is the orig tarball of one source package. Env names a variable that points at
// a local copy to use instead of the network.
type Orig struct {
	Source, File, SHA256, Env string

	once sync.Once
	path string
	err  error
}

// Get returns the path of the verified tarball, fetched once per test binary; aptDir
// holds the private apt configuration and the downloads (the caller removes it).
func (o *Orig) Get(t testing.TB, aptDir string) string {
	t.Helper()
	o.once.Do(func() { o.path, o.err = o.fetch(aptDir) })
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o.path
}

// One index download serves every package a test binary fetches.
var (
	update    sync.Once
	updateErr error
)

func (o *Orig) fetch(dir string) (string, error) {
	if p := os.Getenv(o.Env); p != "" {
		return p, o.check(p)
	}
	cache, cacheErr := testenv.CacheDir("debsrc")
	if cacheErr == nil {
		if p := filepath.Join(cache, o.File); o.check(p) == nil {
			return p, nil
		}
	}
	p, err := o.download(dir)
	if err != nil || cacheErr != nil {
		return p, err
	}
	return o.keep(p, cache)
}

// keep copies the verified tarball into the cache, by rename so that a parallel or
// interrupted run never sees a partial file, and returns the cached path.
func (o *Orig) keep(path, cache string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(cache, "."+o.File+".*")
	if err != nil {
		return path, nil // an unwritable cache only costs the next run a download
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return path, nil
	}
	if err := tmp.Chmod(0o644); err != nil { // CreateTemp makes it 0600
		tmp.Close()
		return path, nil
	}
	if err := tmp.Close(); err != nil {
		return path, nil
	}
	dst := filepath.Join(cache, o.File)
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return path, nil
	}
	return dst, nil
}

// download fetches the tarball with apt-get source into dir and checks it.
func (o *Orig) download(dir string) (string, error) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("apt-get not found: set %s to a copy of %s (sha256 %s)", o.Env, o.File, o.SHA256)
	}
	opts := []string{"-q", "-o", "Dir::Etc::SourceList=" + filepath.Join(dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(dir, "none"),
		"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"), "-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "APT::Sandbox::User=root"}
	run := func(args ...string) error {
		cmd := exec.Command("apt-get", append(slices.Clone(opts), args...)...)
		cmd.Dir = filepath.Join(dir, "src")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	update.Do(func() {
		for _, d := range []string{"lists/partial", "cache/archives/partial", "src"} {
			if updateErr = os.MkdirAll(filepath.Join(dir, d), 0o755); updateErr != nil {
				return
			}
		}
		if updateErr = os.WriteFile(filepath.Join(dir, "sources.list"), []byte(SourcesList), 0o644); updateErr != nil {
			return
		}
		updateErr = run("update")
	})
	if updateErr != nil {
		return "", updateErr
	}
	if err := run("source", "--download-only", o.Source); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "src", o.File)
	return p, o.check(p)
}

func (o *Orig) check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != o.SHA256 {
		return fmt.Errorf("%s: sha256 %x, want %s", path, sum, o.SHA256)
	}
	return nil
}
