package repo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// rpmDBPath asks rpm where its database lives (%_dbpath differs between distributions,
// e.g. ~/.rpmdb on Debian), so the check below looks where rpm itself will.
func rpmDBPath(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "rpm", "--eval", "%{_dbpath}").Output()
	if err != nil {
		return "", fmt.Errorf("rpm --eval %%{_dbpath}: %w", err)
	}
	p := strings.TrimSpace(string(out))
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("rpm --eval %%{_dbpath}: %q is not an absolute path", p)
	}
	return p, nil
}

// Installed lists the packages in the rpmdb under root ("" or "/" for the host).
func Installed(ctx context.Context, root string) ([]Package, error) {
	if root == "" {
		root = "/"
	}
	root, err := filepath.Abs(root) // rpm refuses a relative --root
	if err != nil {
		return nil, err
	}
	db, err := rpmDBPath(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(root, db)); err != nil {
		return nil, fmt.Errorf("rpm database: %w", err)
	}
	cmd := exec.CommandContext(ctx, "rpm", "--root", root, "-qa", "--qf",
		`%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n`)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("rpm --root %s -qa: %w: %s", root, err, strings.TrimSpace(stderr.String()))
	}
	var pkgs []Package
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			continue
		}
		e, err := strconv.Atoi(f[1])
		if err != nil {
			return nil, fmt.Errorf("rpm -qa: bad epoch in %q", line)
		}
		pkgs = append(pkgs, Package{Name: f[0], Epoch: e, Version: f[2], Release: f[3], Arch: f[4]})
	}
	return pkgs, nil
}
