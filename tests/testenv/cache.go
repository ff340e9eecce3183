package testenv

import (
	"os"
	"path/filepath"
)

// CacheVar names the directory where tests keep what they download or prepare between
// runs and between test packages (kernel images, upstream tarballs); by default
// /var/cache/syscare-tests, or the user's cache directory where that cannot be made.
const CacheVar = "SYSCARE_TEST_CACHE"

// CacheDir returns the cache directory for name, made if needed. What goes in must be
// checked on the way out (a checksum, a complete marker) and written by rename, since
// test packages run in parallel and a run may be interrupted.
func CacheDir(name string) (string, error) {
	base := os.Getenv(CacheVar)
	if base == "" {
		base = "/var/cache/syscare-tests"
		if err := os.MkdirAll(base, 0o755); err != nil {
			user, uerr := os.UserCacheDir()
			if uerr != nil {
				return "", err
			}
			base = filepath.Join(user, "syscare-tests")
		}
	}
	dir := filepath.Join(base, name)
	return dir, os.MkdirAll(dir, 0o755)
}
