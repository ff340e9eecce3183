// Package rpmdb asks the RPM database under a root prefix which packages are installed,
// through the rpm command so that the database path and backend are rpm's own
// (`rpm --eval %_dbpath`), never guessed.
package rpmdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/syscare/syscare/runtime/patchmeta"
)

// ErrNotInstalled is wrapped when no installed package has the wanted NEVRA.
var ErrNotInstalled = errors.New("target package not installed")

const queryFormat = `%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n`

// Installed returns every installed package called name in the rpmdb of root ("" or "/"
// for the host).
func Installed(ctx context.Context, root, name string) ([]patchmeta.Package, error) {
	args := []string{"-q", "--qf", queryFormat, "--", name}
	if root != "" && root != "/" {
		args = append([]string{"--root", root}, args...)
	}
	cmd := exec.CommandContext(ctx, "rpm", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && strings.Contains(stdout.String()+stderr.String(), "is not installed") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rpm query %s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	var pkgs []patchmeta.Package
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			return nil, fmt.Errorf("rpm query %s: unexpected line %q", name, line)
		}
		epoch, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("rpm query %s: epoch %q: %w", name, f[1], err)
		}
		pkgs = append(pkgs, patchmeta.Package{Name: f[0], Epoch: epoch, Version: f[2], Release: f[3], Arch: f[4]})
	}
	return pkgs, nil
}

// Verify checks that want is installed with exactly its epoch, version, release and arch.
func Verify(ctx context.Context, root string, want patchmeta.Package) error {
	pkgs, err := Installed(ctx, root, want.Name)
	if err != nil {
		return err
	}
	var have []string
	for _, p := range pkgs {
		if p.Epoch == want.Epoch && p.Version == want.Version && p.Release == want.Release &&
			(want.Arch == "" || p.Arch == want.Arch || want.Arch == "noarch") {
			return nil
		}
		have = append(have, p.NEVRA())
	}
	if len(have) == 0 {
		return fmt.Errorf("%w: %s (no %s installed)", ErrNotInstalled, want.NEVRA(), want.Name)
	}
	return fmt.Errorf("%w: %s (installed: %s)", ErrNotInstalled, want.NEVRA(), strings.Join(have, ", "))
}
