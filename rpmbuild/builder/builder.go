// Package builder is the syscare build pipeline: from a source RPM, its debuginfo RPMs
// and .patch files to a hot patch RPM, rebuilding only the translation units a fix touches.
package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/syscare/syscare/rpmbuild/capture"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/rpmbuild/diff"
	"github.com/syscare/syscare/rpmbuild/rpmfile"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// Errors a caller tells apart (the command maps them to exit codes). Two outcomes are
// the differ's own and come back unchanged: diff.ErrNoChange when the fix changes no
// function of any shipped ELF, and a *diff.UnpatchableError (function, section and
// reason) when a change cannot be hot patched.
var (
	// ErrBadInput: an input file is not what its flag says (corrupt, wrong kind, wrong version).
	ErrBadInput = errors.New("bad input")
	// ErrMissingTool: a program the build needs is not installed.
	ErrMissingTool = errors.New("missing tool")
	// ErrCompilerMismatch: the compiler here is not the one that built the shipped binaries.
	ErrCompilerMismatch = errors.New("compiler mismatch")
	// ErrPatchApply: a .patch file does not apply to the prepared sources.
	ErrPatchApply = errors.New("patch does not apply")
)

// Options are the flags of syscare build.
type Options struct {
	PatchName, PatchVersion, PatchRelease, Description string
	Source                                             string
	Debuginfo                                          []string
	Patches                                            []string
	OutputDir, WorkDir                                 string
	Jobs                                               int
	SkipCleanup, SkipCompilerCheck, Verbose            bool
	// Wrapper is the executable that acts as compiler wrapper and namespace helper
	// (syscare-build itself).
	Wrapper string
	// Progress receives one line per step with its time.
	Progress io.Writer
	// Events, when set, receives progress events: each step's start and end, and while
	// it runs, its elapsed time and the objects compiled so far (progress.go).
	Events func(Event)
	// NoBind turns the mount-namespace binding off (PATH shims and CC/CXX only).
	NoBind bool
	// DryRun stops after the report and the link: no RPM is written.
	DryRun bool
	// KernelConfig is the kernel configuration used when neither the kernel source
	// RPM's tree nor the debuginfo has one.
	KernelConfig string
	// KernelCache keeps prepared kernel trees between builds ("" keeps none).
	KernelCache string
	// ModuleSources are source RPMs of out-of-tree kernel modules (kernel patches only).
	ModuleSources []string
}

// Result describes a finished build.
type Result struct {
	// RPM, SRPM and Patch are the first patch's (by target package name).
	RPM, SRPM string
	Patch     *patchmeta.Patch
	// RPMs, SRPMs and Patches hold one patch per binary package that ships a patched
	// ELF, in the order of the package names.
	RPMs, SRPMs []string
	Patches     []*patchmeta.Patch
	// WorkDir is kept only with SkipCleanup.
	WorkDir string
	// Steps are the step names with their durations, in order.
	Steps []Step
	// Rebuilt counts the translation units compiled again, of Total recorded.
	Rebuilt, Total int
	// Reports are the patch reports, one per patched ELF (of every ELF a refused or
	// unchanged build diffed).
	Reports []*diff.Report
	// DryRun: the build stopped before writing RPMs (RPM and SRPM are empty).
	DryRun bool
	// Binaries is, per shipped ELF, what the patch replaces and adds and what the
	// cross-check found unchanged.
	Binaries []BinaryStatus
	// ModuleSize is the size of a kernel patch's livepatch module.
	ModuleSize int64
}

// Step is one timed step.
type Step struct {
	Name     string
	Duration time.Duration
}

// Failure is the error of a failed build: it carries the log's path and last lines.
type Failure struct {
	Err     error
	LogPath string
	Tail    []string
	// Reports are the patch reports made before the failure (a refusal has one
	// naming the function, the section and the reason).
	Reports []*diff.Report
	// Binaries is what the cross-check found, when it ran.
	Binaries []BinaryStatus
}

func (f *Failure) Error() string { return f.Err.Error() }
func (f *Failure) Unwrap() error { return f.Err }

// tools are the programs the pipeline runs, with the package that brings each.
var tools = [][2]string{{"rpmbuild", "rpm-build (Debian: rpm)"}, {"rpm2cpio", "rpm"}, {"cpio", "cpio"},
	{"patch", "patch"}, {"gcc", "gcc"}, {"ld", "binutils"}, {"objcopy", "binutils"}}

// CheckTools reports the first missing tool.
func CheckTools() error {
	for _, t := range tools {
		if _, err := exec.LookPath(t[0]); err != nil {
			return fmt.Errorf("%w: %s is not on PATH (install %s)", ErrMissingTool, t[0], t[1])
		}
	}
	return nil
}

type build struct {
	opts     Options
	work     string
	log      *os.File
	logw     io.Writer
	src      *rpmfile.Header
	dbg      []*rpmfile.Header
	index    *debuginfo.Index
	top      string
	spec     string
	buildDir string
	cap      *capture.Capture
	compiled recordCounter // compile records seen so far (progress.go)
	counted  stepCount     // objects done of total, for steps that count them (progress.go)
	tus      []*tu
	res      Result
	targets  []*targetPatch
	notes    []string
	kern     *kernelBuild
	// installedAs maps a link output to the installed paths holding its content, and
	// shipped an installed path to its binary package (install.go).
	installedAs map[string][]string
	shipped     map[string]string
	shippedArch map[string]string
}

// Build runs the whole pipeline.
func Build(ctx context.Context, opts Options) (*Result, error) {
	if opts.PatchVersion == "" {
		opts.PatchVersion = "1"
	}
	if opts.PatchRelease == "" {
		opts.PatchRelease = "1"
	}
	if opts.Jobs <= 0 {
		opts.Jobs = runtime.NumCPU()
	}
	if opts.OutputDir == "" {
		opts.OutputDir = "."
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	base := opts.WorkDir
	if base == "" {
		base = os.TempDir()
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("workdir: %w", err)
	}
	if err := safeParent(base); err != nil {
		return nil, fmt.Errorf("workdir: %w", err)
	}
	work, err := os.MkdirTemp(base, "syscare-build-"+safeName(opts.PatchName)+"-")
	if err != nil {
		return nil, fmt.Errorf("workdir: %w", err)
	}
	b := &build{opts: opts, work: work}
	b.log, err = os.Create(filepath.Join(work, "build.log"))
	if err != nil {
		return nil, err
	}
	b.logw = b.log
	if opts.Verbose {
		b.logw = io.MultiWriter(b.log, os.Stderr)
	}
	err = b.run(ctx)
	b.log.Close()
	logPath := filepath.Join(work, "build.log")
	if err != nil {
		tail := tailLines(logPath, 20)
		if !opts.SkipCleanup {
			// The workdir goes, the log stays where the user can read it.
			if kept, kerr := keepLog(logPath, opts.OutputDir, opts.PatchName, time.Now()); kerr == nil {
				logPath = kept
				os.RemoveAll(work)
			} else {
				// The private workdir is a safe place too: keep the log there alone.
				logPath = pruneExcept(work, "build.log")
			}
		}
		return nil, &Failure{Err: err, LogPath: logPath, Tail: tail, Reports: b.res.Reports, Binaries: b.res.Binaries}
	}
	if opts.SkipCleanup {
		b.res.WorkDir = work
	} else {
		os.RemoveAll(work)
	}
	return &b.res, nil
}

// buildStep is one timed step of a pipeline.
type buildStep struct {
	name string
	fn   func(context.Context) (string, error)
}

func (b *build) run(ctx context.Context) error {
	steps := []buildStep{
		{"prepare", b.prepare},
		{"build original", b.buildOriginal},
		{"build patched", b.buildPatched},
		{"diff", b.diff},
		{"cross-check", b.crossCheckStep},
		{"link", b.link},
		{"package", b.pack},
	}
	if b.isKernelSource() {
		steps = b.kernelSteps()
	}
	for _, s := range steps {
		if s.name == "package" && b.opts.DryRun {
			b.event(Event{Type: "skipped", Step: s.name})
			fmt.Fprintf(b.opts.Progress, "%-60s skipped\n", "package (dry run)")
			b.res.DryRun = true
			break
		}
		fmt.Fprintf(b.logw, "==> %s\n", s.name)
		start := time.Now()
		b.event(Event{Type: "start", Step: s.name})
		b.counted.step, b.counted.start = s.name, start
		stop, watched := make(chan struct{}), make(chan struct{})
		go b.watchStep(s.name, start, stop, watched)
		what, err := s.fn(ctx)
		close(stop)
		<-watched
		d := time.Since(start)
		b.res.Steps = append(b.res.Steps, Step{s.name, d})
		if err != nil {
			b.event(Event{Type: "failed", Step: s.name, Seconds: d.Seconds()})
			fmt.Fprintf(b.opts.Progress, "%-60s failed after %.2fs\n", s.name, d.Seconds())
			fmt.Fprintf(b.logw, "error: %v\n", err)
			return err
		}
		b.event(Event{Type: "done", Step: s.name, Detail: what, Seconds: d.Seconds()})
		line := s.name
		if what != "" {
			line += " (" + what + ")"
		}
		fmt.Fprintf(b.opts.Progress, "%-60s %7.2fs\n", line, d.Seconds())
	}
	return nil
}

// command runs a tool with its output going to the log.
func (b *build) command(ctx context.Context, dir string, name string, args ...string) error {
	fmt.Fprintf(b.logw, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = b.logw, b.logw
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (b *build) rpmbuildArgs(stage ...string) []string {
	args := append([]string{}, stage...)
	return append(args, "--nodeps", "--define", "_topdir "+b.top,
		"--define", fmt.Sprintf("_smp_mflags -j%d", b.opts.Jobs), b.spec)
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r < ' ' {
			return '_'
		}
		return r
	}, s)
}

func tailLines(path string, n int) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// copyFile copies from to a new file that then replaces to: a symlink or another file
// planted at to is replaced, never followed or written through, and a reader of to
// never sees a partial copy.
func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+".tmp*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(out.Name())
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	if err := out.Chmod(st.Mode().Perm() | 0o200); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(out.Name(), to); err != nil {
		return err
	}
	ok = true
	return nil
}

// keepLog copies the log of a failed build into dir as syscare-build-NAME-<unix
// seconds>.log, adding -2, -3... when that name exists. The file is created with
// O_EXCL|O_NOFOLLOW: in a directory other users can write to, a name they planted
// (a symlink to a file of root's, or a file of their own) is skipped, never opened.
func keepLog(log, dir, name string, now time.Time) (string, error) {
	if dir == "" {
		return "", errors.New("no directory for the log")
	}
	in, err := os.Open(log)
	if err != nil {
		return "", err
	}
	defer in.Close()
	base := fmt.Sprintf("syscare-build-%s-%d", safeName(name), now.Unix())
	for i := 1; i <= 100; i++ {
		p := filepath.Join(dir, base+".log")
		if i > 1 {
			p = filepath.Join(dir, fmt.Sprintf("%s-%d.log", base, i))
		}
		out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ELOOP) {
			continue
		}
		if err != nil {
			return "", err
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(p)
			return "", err
		}
		return p, nil
	}
	return "", fmt.Errorf("%s: 100 log names taken", dir)
}

// safeParent refuses a directory in which another user could rename the private
// work directory away and put a symlink in its place (so that root writes where
// they chose): one owned by someone else than us or root, or writable by others
// without the sticky bit (/tmp has it).
func safeParent(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := uint32(os.Geteuid()); sys.Uid != uid && sys.Uid != 0 {
		return fmt.Errorf("%s belongs to uid %d: another user could replace the build directory in it", dir, sys.Uid)
	}
	if st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("%s is writable by other users and not sticky: another user could replace the build directory in it", dir)
	}
	return nil
}

// pruneExcept removes everything in dir but the entry keep, and returns keep's path.
func pruneExcept(dir, keep string) string {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != keep {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	return filepath.Join(dir, keep)
}
