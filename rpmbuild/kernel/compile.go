package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// ErrAssembly: the fix changes an assembly file, which cannot be diffed into functions.
var ErrAssembly = errors.New("assembly file")

// ErrUnsupportedFile: the fix changes a file the kernel build cannot patch this way.
var ErrUnsupportedFile = errors.New("unsupported file in the fix")

// PatchFlags are added to kbuild's own flags for the two compiles of a translation
// unit: one section per function and per variable, so that the differ can tell them
// apart and the module carries only what changed.
const PatchFlags = "-ffunction-sections -fdata-sections"

// TU is one translation unit the fix touches.
type TU struct {
	Source string // path in the tree, "fs/proc/loadavg.c"
	Object string // "fs/proc/loadavg.o"
	// Module is the module the object is linked into, "" for vmlinux (read from the
	// flags kbuild used: -DMODULE and KBUILD_MODNAME).
	Module string
	// Dir is an out-of-tree module's directory (Source and Object are relative to
	// it), "" for the kernel tree.
	Dir string
}

// TouchedFiles lists the files the .patch files change, as paths in the tree (the
// first component, a/ or b/, stripped as patch -p1 does).
func TouchedFiles(patches []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, p := range patches {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), "+++ ")
			if !ok {
				continue
			}
			name, _, _ := strings.Cut(rest, "\t")
			name = strings.TrimSpace(name)
			if name == "/dev/null" {
				continue
			}
			if _, after, ok := strings.Cut(name, "/"); ok {
				name = after
			}
			name = filepath.Clean(name)
			if !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	sort.Strings(out)
	return out, nil
}

// TUs turns the touched files into translation units: C files are compiled, assembly
// is refused (it has no functions the differ can compare), documentation is ignored,
// anything else (headers, Makefiles, Kconfig) is refused for now with its name.
func TUs(files []string) ([]TU, []string, error) {
	var tus []TU
	var ignored []string
	for _, f := range files {
		switch ext := filepath.Ext(f); {
		case ext == ".c":
			tus = append(tus, TU{Source: f, Object: strings.TrimSuffix(f, ".c") + ".o"})
		case ext == ".S" || ext == ".s":
			return nil, nil, fmt.Errorf("%w: the fix changes %s; assembly cannot be live patched (no function the differ can compare)", ErrAssembly, f)
		case strings.HasPrefix(f, "Documentation/") || ext == ".rst" || ext == ".txt":
			ignored = append(ignored, f)
		case ext == ".h":
			return nil, nil, fmt.Errorf("%w: the fix changes the header %s; kernel builds recompile only the C files a fix names for now", ErrUnsupportedFile, f)
		default:
			return nil, nil, fmt.Errorf("%w: the fix changes %s, which is not C source", ErrUnsupportedFile, f)
		}
	}
	if len(tus) == 0 {
		return nil, nil, fmt.Errorf("%w: the fix changes no C file (%s)", ErrUnsupportedFile, strings.Join(files, ", "))
	}
	return tus, ignored, nil
}

var modnameRe = regexp.MustCompile(`-DKBUILD_MODNAME='?"?\\?"?([A-Za-z0-9_]+)`)

// Compile builds tu in the tree with kbuild (make path/file.o), with PatchFlags on top
// of kbuild's flags, and copies the object to out. It fills tu.Module from the command
// kbuild recorded.
func Compile(ctx context.Context, log io.Writer, tree, release string, tu *TU, out string) error {
	obj := filepath.Join(tree, tu.Object)
	os.Remove(obj)
	args := append(makeArgs(tree, release), tu.Object)
	if err := run(ctx, log, tree, nil, "make", args...); err != nil {
		return fmt.Errorf("compile %s: %w", tu.Source, err)
	}
	return takeObject(tree, tu, out)
}

// takeObject reads the command kbuild recorded for tu's object in dir (its flags
// name the module it goes into) and copies the object to out.
func takeObject(dir string, tu *TU, out string) error {
	cmd, err := os.ReadFile(filepath.Join(dir, filepath.Dir(tu.Object), "."+filepath.Base(tu.Object)+".cmd"))
	if err != nil {
		return fmt.Errorf("compile %s: kbuild wrote no command file: %w", tu.Source, err)
	}
	line, _, _ := strings.Cut(string(cmd), "\n")
	if !strings.Contains(line, "-ffunction-sections") {
		return fmt.Errorf("compile %s: kbuild's command lacks %s (KCFLAGS not honoured)", tu.Source, PatchFlags)
	}
	tu.Module = ""
	if strings.Contains(line, " -DMODULE ") {
		if m := modnameRe.FindStringSubmatch(line); m != nil {
			tu.Module = m[1]
		} else {
			return fmt.Errorf("compile %s: built for a module, but its KBUILD_MODNAME is not in the command", tu.Source)
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return copyPlain(filepath.Join(dir, tu.Object), out)
}

// BuildExternal builds an out-of-tree module directory against the tree (make
// M=DIR modules, with PatchFlags) and copies the objects of tus into outDir; each
// TU's Module is read from kbuild's command. It returns the built modules' paths.
func BuildExternal(ctx context.Context, log io.Writer, tree, release, dir string, tus []*TU, outDir string) ([]string, error) {
	for _, tu := range tus {
		os.Remove(filepath.Join(dir, tu.Object))
	}
	args := append(makeArgs(tree, release), "M="+dir, "modules")
	if err := run(ctx, log, tree, nil, "make", args...); err != nil {
		return nil, fmt.Errorf("build the out-of-tree module in %s: %w", dir, err)
	}
	for _, tu := range tus {
		if err := takeObject(dir, tu, filepath.Join(outDir, tu.Object)); err != nil {
			return nil, err
		}
	}
	kos, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	return kos, nil
}

// CompileOriginal compiles tu in the tree before the fix is applied, like Compile, or
// takes the object from the tree cache: an original object depends only on the
// prepared tree and the flags, which name the cached tree, so a later fix to the
// same file does not compile it again.
func (t *Tree) CompileOriginal(ctx context.Context, log io.Writer, tu *TU, out string) (cached bool, err error) {
	if t.objects != "" {
		obj := filepath.Join(t.objects, tu.Object)
		if mod, err := os.ReadFile(obj + ".module"); err == nil && isFile(obj) {
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return false, err
			}
			tu.Module = strings.TrimSpace(string(mod))
			fmt.Fprintf(log, "original %s from the tree cache (module %q)\n", tu.Object, tu.Module)
			return true, copyPlain(obj, out)
		}
	}
	if err := Compile(ctx, log, t.Dir, t.Release, tu, out); err != nil {
		return false, err
	}
	if t.objects != "" {
		// Into the cache under temporary names, renamed into place: a reader sees a
		// complete object (the .module file, written last, marks it complete).
		obj := filepath.Join(t.objects, tu.Object)
		if err := os.MkdirAll(filepath.Dir(obj), 0o755); err == nil {
			if tmp, err := os.CreateTemp(filepath.Dir(obj), ".obj-"); err == nil {
				tmp.Close()
				if copyPlain(out, tmp.Name()) == nil && os.Rename(tmp.Name(), obj) == nil {
					os.WriteFile(tmp.Name(), []byte(tu.Module+"\n"), 0o644)
					os.Rename(tmp.Name(), obj+".module")
				}
				os.Remove(tmp.Name())
			}
		}
	}
	return false, nil
}
