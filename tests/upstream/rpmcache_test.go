package upstream

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// cachedRPMs is rpmbuildSpec for packages too long to build on every run (OpenSSL: about
// 800 compiler runs): the three RPMs are kept in the tests' cache under a key made of the
// spec's and the tarball's contents, so that a changed spec or source builds again. Only
// the package build is cached; syscare-build, the thing under test, always runs. A lock
// file makes a parallel run wait for the build in progress instead of doing it twice.
func cachedRPMs(t testing.TB, dir, specName, tarball, source0, name, version string) *rpmSet {
	t.Helper()
	key := sha256.New()
	for _, f := range []string{filepath.Join(dir, specName), tarball} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		key.Write(data)
	}
	cache, err := testenv.CacheDir("rpms")
	if err != nil {
		t.Logf("no cache (%v): building", err)
		return rpmbuildSpec(t, dir, specName, tarball, source0, name, version)
	}
	final := filepath.Join(cache, fmt.Sprintf("%s-%s-%x", name, version, key.Sum(nil)[:8]))
	lock, err := os.OpenFile(final+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if set, err := readRPMCache(final); err == nil {
		t.Logf("RPMs of %s from the cache %s", specName, final)
		return set
	}
	set := rpmbuildSpec(t, dir, specName, tarball, source0, name, version)
	if err := writeRPMCache(set, final); err != nil {
		t.Logf("cache not written: %v", err)
	}
	return set
}

// The cache entry is a directory with the three RPMs and a file "sums" naming each with
// its sha256, written last: an entry without it, or with a file that does not match, is
// not used.
func writeRPMCache(set *rpmSet, final string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(final), "."+filepath.Base(final)+".*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var sums strings.Builder
	for _, f := range []string{set.srpm, set.rpm, set.debuginfo} {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmp, filepath.Base(f)), data, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(&sums, "%s %s\n", hex.EncodeToString(sum[:]), filepath.Base(f))
	}
	if err := os.WriteFile(filepath.Join(tmp, "sums"), []byte(sums.String()), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	os.RemoveAll(final) // an entry that failed its check
	return os.Rename(tmp, final)
}

func readRPMCache(final string) (*rpmSet, error) {
	sums, err := os.ReadFile(filepath.Join(final, "sums"))
	if err != nil {
		return nil, err
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		want, file, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q", final, line)
		}
		p := filepath.Join(final, file)
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != want {
			return nil, fmt.Errorf("%s: sha256 differs from the recorded one", p)
		}
		files = append(files, p)
	}
	if len(files) != 3 {
		return nil, fmt.Errorf("%s: %d files, want 3", final, len(files))
	}
	return &rpmSet{top: final, srpm: files[0], rpm: files[1], debuginfo: files[2]}, nil
}
