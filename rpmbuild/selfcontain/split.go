package selfcontain

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/runtime/elfsafe"
)

// SplitDebug does to the ELF file bin what an RPM build does to the files it ships:
// it writes bin's symbol table and debug sections to debugOut (objcopy
// --only-keep-debug), the debug file Make reads, and strips bin of them (strip
// --strip-all keeps only what the dynamic loader needs). bin must have a GNU build-id,
// which is what ties the debug copy to it, and a .symtab, or there is nothing to keep.
// On error neither bin nor debugOut is changed.
func SplitDebug(ctx context.Context, bin, debugOut string) error {
	if err := splittable(bin); err != nil {
		return err
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return err
	}
	// Both results are written next to their final names and renamed into place only
	// once both exist, so that a failure leaves the two paths as they were.
	debugTmp, err := tempPath(debugOut)
	if err != nil {
		return err
	}
	defer os.Remove(debugTmp)
	binTmp, err := tempPath(bin)
	if err != nil {
		return err
	}
	defer os.Remove(binTmp)
	if err := command(ctx, "objcopy", "--only-keep-debug", bin, debugTmp); err != nil {
		return fmt.Errorf("debug copy of %s: %w", bin, err)
	}
	if err := command(ctx, "strip", "--strip-all", "-o", binTmp, bin); err != nil {
		return fmt.Errorf("strip %s: %w", bin, err)
	}
	if err := os.Chmod(binTmp, fi.Mode().Perm()); err != nil {
		return err
	}
	if err := os.Rename(debugTmp, debugOut); err != nil {
		return err
	}
	return os.Rename(binTmp, bin)
}

// splittable checks that bin is an ELF file with a build-id and a symbol table.
func splittable(bin string) error {
	if _, err := debuginfo.BuildID(bin); err != nil {
		return err
	}
	f, err := elfsafe.Open(bin)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Section(".symtab") == nil {
		return fmt.Errorf("%s has no .symtab: it is stripped already, there is no symbol table to keep", bin)
	}
	return nil
}

// tempPath reserves an unused name in the directory of path.
func tempPath(path string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return "", err
	}
	f.Close()
	return f.Name(), nil
}
