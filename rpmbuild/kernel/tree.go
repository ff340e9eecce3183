// Package kernel holds the kernel rules of syscare build: it prepares a kernel tree
// from a kernel source RPM, compiles the translation units a fix touches the way
// kbuild does, diffs them with rpmbuild/diff after setting the kernel's own sections
// aside, and turns the result into a livepatch module built against the tree, with the
// vermagic and symbol CRCs of the kernel the debuginfo describes.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrConfig: no usable kernel configuration.
var ErrConfig = errors.New("kernel configuration")

// TreeOptions say how to prepare a kernel tree.
type TreeOptions struct {
	// SRPM is the kernel source RPM.
	SRPM string
	// Release is the running kernel's release (the debuginfo's modules directory):
	// the tree is prepared with KERNELRELEASE set to it, so that modules built against
	// it carry the running kernel's vermagic.
	Release string
	// Config is a configuration to use when the tree has none (--kernel-config), and
	// DebugConfig one found in the debuginfo package; the tree's own comes first.
	Config, DebugConfig string
	// Cache is where prepared trees are kept between builds ("" keeps none).
	Cache string
	// Work is the build's private directory; the tree the build uses is made in it.
	Work string
	Jobs int
	Log  io.Writer
	// Prep runs the source RPM's %prep in top (rpmbuild -bp) and returns the directory
	// it unpacked into; the builder provides it.
	Prep func(ctx context.Context, top string) (string, error)
}

// Tree is a prepared kernel tree.
type Tree struct {
	Dir     string // the build's own copy: compile and build modules here
	Release string
	// ConfigFrom says where the configuration came from.
	ConfigFrom string
	// Cached tells whether the tree came from the cache.
	Cached bool
	// objects is where original objects compiled from the pristine tree are kept
	// ("" without a cache).
	objects string
}

// readyMark is written last into a prepared tree of the cache.
const readyMark = ".syscare-prepared"

// PrepareTree unpacks the source RPM, runs its %prep, puts the configuration in place
// and runs make olddefconfig modules_prepare, or takes that tree from the cache. The
// build gets a hard-linked copy of it (kbuild and patch replace files, they never
// write into existing ones), so the cached tree stays pristine.
func PrepareTree(ctx context.Context, o TreeOptions) (*Tree, error) {
	key, err := treeKey(o)
	if err != nil {
		return nil, err
	}
	t := &Tree{Dir: filepath.Join(o.Work, "tree"), Release: o.Release}
	if o.Cache != "" {
		// Builds sharing the cache take turns preparing one tree: the second waits
		// for the first and then copies its tree, instead of preparing it again.
		unlock, err := lockDir(o.Cache)
		if err != nil {
			return nil, err
		}
		defer unlock()
		t.objects = filepath.Join(o.Cache, key, "objects")
		cached := filepath.Join(o.Cache, key)
		if from, err := os.ReadFile(filepath.Join(cached, readyMark)); err == nil {
			fmt.Fprintf(o.Log, "kernel tree: prepared tree %s from the cache\n", cached)
			if err := run(ctx, o.Log, o.Work, nil, "cp", "-al", filepath.Join(cached, "tree"), t.Dir); err != nil {
				return nil, err
			}
			t.ConfigFrom, t.Cached = strings.TrimSpace(string(from)), true
			return t, nil
		}
	}
	top := filepath.Join(o.Work, "kernel-prep")
	dir, err := o.Prep(ctx, top)
	if err != nil {
		return nil, err
	}
	root, err := findTreeRoot(dir)
	if err != nil {
		return nil, err
	}
	config := filepath.Join(root, ".config")
	switch {
	case isFile(config):
		t.ConfigFrom = "the source RPM's tree"
	case o.DebugConfig != "":
		t.ConfigFrom = "the debuginfo package (" + filepath.Base(o.DebugConfig) + ")"
		err = copyPlain(o.DebugConfig, config)
	case o.Config != "":
		t.ConfigFrom = "--kernel-config " + o.Config
		err = copyPlain(o.Config, config)
	default:
		return nil, fmt.Errorf("%w: the tree of %s has no .config after %%prep, the debuginfo holds no config-%s, and no --kernel-config was given",
			ErrConfig, filepath.Base(o.SRPM), o.Release)
	}
	if err != nil {
		return nil, err
	}
	if err := checkConfig(config, t.ConfigFrom); err != nil {
		return nil, err
	}
	args := append(makeArgs(root, o.Release), fmt.Sprintf("-j%d", max(o.Jobs, 1)), "olddefconfig", "modules_prepare")
	if err := run(ctx, o.Log, root, nil, "make", args...); err != nil {
		return nil, fmt.Errorf("make olddefconfig modules_prepare: %w", err)
	}
	// One small translation unit builds what every single-object make needs once more
	// (objtool's and resolve_btfids' helpers), so that each build's copy only compiles.
	if err := run(ctx, o.Log, root, nil, "make", append(makeArgs(root, o.Release), warmUpObject)...); err != nil {
		return nil, fmt.Errorf("make %s: %w", warmUpObject, err)
	}
	if o.Cache == "" {
		if err := os.Rename(root, t.Dir); err != nil {
			return nil, err
		}
		os.RemoveAll(top)
		return t, nil
	}
	// Into the cache: made under a temporary name in the cache's file system, renamed
	// when complete, so a crash never leaves a half tree that looks ready.
	if err := os.MkdirAll(o.Cache, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(o.Cache, ".prepare-")
	if err != nil {
		return nil, err
	}
	if err := run(ctx, o.Log, o.Work, nil, "mv", root, filepath.Join(tmp, "tree")); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	os.RemoveAll(top)
	if err := os.WriteFile(filepath.Join(tmp, readyMark), []byte(t.ConfigFrom+"\n"), 0o644); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	cached := filepath.Join(o.Cache, key)
	if err := os.Rename(tmp, cached); err != nil {
		// Another build cached the same tree meanwhile: use theirs.
		os.RemoveAll(tmp)
		if !isFile(filepath.Join(cached, readyMark)) {
			return nil, err
		}
	}
	if err := run(ctx, o.Log, o.Work, nil, "cp", "-al", filepath.Join(cached, "tree"), t.Dir); err != nil {
		return nil, err
	}
	return t, nil
}

// warmUpObject is compiled once when a tree is prepared.
const warmUpObject = "lib/ctype.o"

// treeFormat changes when prepared trees are made differently: older ones are not used.
const treeFormat = "3"

// makeArgs are the arguments of every make in the tree: the release the modules are
// for, and the flags the fix's objects are compiled with. The tree is prepared with
// the same flags, so kbuild finds every prepared file's command unchanged and never
// rewrites a file the build's hard-linked copy shares with the cache. BTF is off for
// make: it only serves the links of vmlinux and of modules' BTF (which needs the
// vmlinux the tree does not have), and its resolve_btfids tool, built with absolute
// paths, would be rebuilt in every copy of the tree.
func makeArgs(tree, release string) []string {
	return []string{"-C", tree, "KERNELRELEASE=" + release, "KCFLAGS=" + PatchFlags, "CONFIG_DEBUG_INFO_BTF="}
}

// treeKey names a prepared tree by what it is made of: the source RPM's digest, the
// release and the configurations offered.
func treeKey(o TreeOptions) (string, error) {
	h := sha256.New()
	for _, f := range []string{o.SRPM, o.DebugConfig, o.Config} {
		if f == "" {
			h.Write([]byte{0})
			continue
		}
		in, err := os.Open(f)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, in)
		in.Close()
		if err != nil {
			return "", err
		}
	}
	h.Write([]byte(o.Release + "\x00" + treeFormat))
	return o.Release + "-" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// findTreeRoot finds the kernel tree %prep made: the directory with both Makefile
// and Kconfig, at most two levels below dir.
func findTreeRoot(dir string) (string, error) {
	isRoot := func(d string) bool {
		return isFile(filepath.Join(d, "Makefile")) && isFile(filepath.Join(d, "Kconfig"))
	}
	if isRoot(dir) {
		return dir, nil
	}
	for _, pat := range []string{"*", "*/*"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, d := range m {
			if isRoot(d) {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("%%prep left no kernel tree (a directory with Makefile and Kconfig) in %s", dir)
}

// checkConfig refuses a configuration a livepatch module cannot be built against.
func checkConfig(path, from string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	want := map[string]bool{"CONFIG_MODULES": false, "CONFIG_LIVEPATCH": false}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if _, w := want[k]; ok && w && v == "y" {
			want[k] = true
		}
	}
	for _, k := range []string{"CONFIG_MODULES", "CONFIG_LIVEPATCH"} {
		if !want[k] {
			return fmt.Errorf("%w: the configuration from %s does not set %s=y: no livepatch module can be built for it", ErrConfig, from, k)
		}
	}
	return nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// copyPlain copies a small file.
func copyPlain(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// run runs a tool with its output going to the log; the error carries the last lines.
func run(ctx context.Context, log io.Writer, dir string, env []string, name string, args ...string) error {
	fmt.Fprintf(log, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var tail bytes.Buffer
	cmd.Stdout = log
	cmd.Stderr = io.MultiWriter(log, &tail)
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(tail.String())
		if i := strings.LastIndex(msg, "\n"); len(msg) > 400 && i > 0 {
			msg = msg[len(msg)-400:]
		}
		if msg != "" {
			return fmt.Errorf("%s: %w: %s", name, err, msg)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// lockDir takes an exclusive lock on directory dir (made if missing) and returns its
// release; the lock also ends with the process. Locking the directory itself leaves
// no lock file behind in the cache.
func lockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kernel tree cache lock %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kernel tree cache lock %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}
