package kpatch

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// ErrTransitionTimeout is wrapped by a *TransitionError when tasks did not switch in time.
var ErrTransitionTimeout = errors.New("livepatch transition timed out")

// ErrNotLoaded is wrapped when an operation needs a module that is not loaded.
var ErrNotLoaded = errors.New("module not loaded")

// ErrNeedsReload is wrapped by Enable when the patch was disabled and freed: only
// unloading and loading its module enables it again.
var ErrNeedsReload = errors.New("patch was disabled; its module must be reloaded")

// ErrOtherModule is wrapped by Load when a module of the same name but another build
// is loaded: it is left alone rather than taken for the requested one.
var ErrOtherModule = errors.New("another build of the module is loaded")

// Syscalls loads and removes kernel modules. The real one is Kernel; tests give a fake
// that edits a temporary sysfs tree.
type Syscalls interface {
	// FinitModule loads the module in f (finit_module(2)).
	FinitModule(f *os.File, params string) error
	// DeleteModule unloads the named module without waiting (delete_module(2), O_NONBLOCK).
	DeleteModule(name string) error
}

// Kernel is the real Syscalls.
type Kernel struct{}

// FinitModule calls finit_module(2).
func (Kernel) FinitModule(f *os.File, params string) error {
	return unix.FinitModule(int(f.Fd()), params, 0)
}

// DeleteModule calls delete_module(2) with O_NONBLOCK, as rmmod does.
func (Kernel) DeleteModule(name string) error {
	return unix.DeleteModule(name, unix.O_NONBLOCK)
}

// State is where a livepatch module stands.
type State int

// States.
const (
	Unloaded State = iota
	// Loaded: the module is loaded but its patch is not registered (it was disabled).
	Loaded
	Enabled
	Enabling
	Disabling
)

func (s State) String() string {
	switch s {
	case Unloaded:
		return "unloaded"
	case Loaded:
		return "loaded (disabled)"
	case Enabled:
		return "enabled"
	case Enabling:
		return "enabling"
	case Disabling:
		return "disabling"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Status is what sysfs says about one livepatch module.
type Status struct {
	Name  string
	State State
}

// Task is one task that has not switched to a transition's target state.
type Task struct {
	Pid, Tid int
	Comm     string
}

func (t Task) String() string {
	if t.Pid == t.Tid {
		return fmt.Sprintf("%d (%s)", t.Pid, t.Comm)
	}
	return fmt.Sprintf("%d/%d (%s)", t.Pid, t.Tid, t.Comm)
}

// TransitionError reports a transition that did not finish in time.
type TransitionError struct {
	Patch string
	// Enable is the target of the transition that stalled.
	Enable bool
	// Timeout is how long the transition was waited for.
	Timeout time.Duration
	// Tasks are the tasks that had not switched when the wait ended.
	Tasks []Task
	// Reverted is true when the transition was reversed and the reversal finished,
	// so the patch is back where it was.
	Reverted bool
}

func (e *TransitionError) Error() string {
	to := "disabled"
	if e.Enable {
		to = "enabled"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "livepatch %s: transition to %s did not finish within %v", e.Patch, to, e.Timeout)
	if len(e.Tasks) > 0 {
		b.WriteString("; stalled tasks: ")
		const show = 10
		for i, t := range e.Tasks {
			if i == show {
				fmt.Fprintf(&b, ", and %d more", len(e.Tasks)-show)
				break
			}
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(t.String())
		}
	}
	if e.Reverted {
		b.WriteString("; reverted")
	} else {
		b.WriteString("; not reverted")
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrTransitionTimeout) hold.
func (e *TransitionError) Unwrap() error { return ErrTransitionTimeout }

// Patcher drives livepatch modules of one kernel.
type Patcher struct {
	// Root is prepended to /sys and /proc ("" or "/" for the real ones).
	Root string
	// Sys does the module syscalls.
	Sys Syscalls
	// Release is the running kernel's release; empty means uname -r.
	Release string
	// Timeout bounds each transition wait (default 30 s).
	Timeout time.Duration
	// RevertTimeout bounds the wait for a stalled transition's reversal (default
	// Timeout). The reversal only has to move back the tasks that did switch, which
	// are not stuck, so it may be given longer than a short Timeout.
	RevertTimeout time.Duration
	// Poll is the interval between two looks at sysfs (default 20 ms).
	Poll time.Duration
}

// New returns a Patcher of the running kernel.
func New() *Patcher { return &Patcher{Sys: Kernel{}} }

func (p *Patcher) path(elem ...string) string {
	return filepath.Join(append([]string{"/", p.Root}, elem...)...)
}

func (p *Patcher) klpDir(name string) string { return p.path("sys/kernel/livepatch", name) }

func (p *Patcher) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return 30 * time.Second
}

func (p *Patcher) poll() time.Duration {
	if p.Poll > 0 {
		return p.Poll
	}
	return 20 * time.Millisecond
}

// KernelRelease returns the release modules must be built for (Release, or uname -r).
func (p *Patcher) KernelRelease() (string, error) {
	if p.Release != "" {
		return p.Release, nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// Check reads the module at path and verifies that it is a live patch built for the
// running kernel release.
func (p *Patcher) Check(path string) (*ModInfo, error) {
	mi, err := ReadModInfo(path)
	if err != nil {
		return nil, err
	}
	if !mi.Livepatch {
		return nil, fmt.Errorf("module %s: %w (no livepatch=Y in .modinfo)", mi.Name, ErrNotLivepatch)
	}
	rel, err := p.KernelRelease()
	if err != nil {
		return nil, err
	}
	if mi.Release() != rel {
		return nil, fmt.Errorf("module %s: %w: built for %q, running %q", mi.Name, ErrReleaseMismatch, mi.Release(), rel)
	}
	return mi, nil
}

func readAttr(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func writeAttr(path, v string) error {
	// No O_CREATE: a vanished patch must be an error, not a new file.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// vanished reports whether err means a sysfs attribute is gone or going: a read racing
// with the kernel's removal of the patch's kobject gets ENODEV rather than ENOENT.
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Status reads the state of the named module from sysfs.
func (p *Patcher) Status(name string) (Status, error) {
	st := Status{Name: name}
	if !moduleNameRe.MatchString(name) {
		return st, fmt.Errorf("module name %q is not a valid module name", name)
	}
	dir := p.klpDir(name)
	enabled, err := readAttr(filepath.Join(dir, "enabled"))
	switch {
	case vanished(err):
		// initstate exists only for loadable modules, not for built-in ones.
		loaded, err := exists(p.path("sys/module", name, "initstate"))
		if err != nil {
			return st, fmt.Errorf("livepatch %s: %w", name, err)
		}
		if loaded {
			st.State = Loaded
		}
		return st, nil
	case err != nil:
		return st, fmt.Errorf("livepatch %s: %w", name, err)
	}
	transition, err := readAttr(filepath.Join(dir, "transition"))
	if err != nil {
		if vanished(err) {
			// Freed between the two reads: the disable just finished.
			return p.Status(name)
		}
		return st, fmt.Errorf("livepatch %s: %w", name, err)
	}
	switch {
	case transition == "1" && enabled == "1":
		st.State = Enabling
	case transition == "1":
		st.State = Disabling
	case enabled == "1":
		st.State = Enabled
	default:
		// Disabled, transition over, not yet freed: as good as freed.
		st.State = Loaded
	}
	return st, nil
}

// List returns the status of every registered live patch.
func (p *Patcher) List() ([]Status, error) {
	ents, err := os.ReadDir(p.path("sys/kernel/livepatch"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list live patches: %w", err)
	}
	var out []Status
	for _, e := range ents {
		if !moduleNameRe.MatchString(e.Name()) {
			continue
		}
		st, err := p.Status(e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Load checks and loads the livepatch module at path, which enables its patch, and
// waits for the transition. If the transition stalls it is reversed and the module
// unloaded, and the *TransitionError names the stalled tasks. A module already
// enabled is left as it is; one loaded but disabled is reloaded; one of the same
// name but another build (build-id) is refused with ErrOtherModule.
func (p *Patcher) Load(ctx context.Context, path string) (*ModInfo, error) {
	mi, err := p.Check(path)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(mi.Name)
	if err != nil {
		return nil, err
	}
	if st.State != Unloaded {
		if err := p.sameBuild(mi); err != nil {
			return nil, err
		}
	}
	switch st.State {
	case Enabled:
		return mi, nil
	case Enabling, Disabling:
		if err := p.Enable(ctx, mi.Name); err == nil {
			return mi, nil
		} else if !errors.Is(err, ErrNeedsReload) {
			return nil, err
		}
		fallthrough
	case Loaded:
		if err := p.Unload(ctx, mi.Name); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open module: %w", err)
	}
	err = p.Sys.FinitModule(f, "")
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("load module %s: %w", mi.Name, err)
	}
	ok, err := exists(p.klpDir(mi.Name))
	if err != nil {
		return nil, fmt.Errorf("livepatch %s: %w", mi.Name, err)
	}
	if !ok {
		uerr := p.deleteModule(ctx, mi.Name)
		return nil, errors.Join(fmt.Errorf("module %s: %w (it registered no patch)", mi.Name, ErrNotLivepatch), uerr)
	}
	if err := p.wait(ctx, mi.Name, true); err != nil {
		var te *TransitionError
		if errors.As(err, &te) && te.Reverted {
			// Reversed: the patch is disabled, drop the module so nothing is left loaded.
			if uerr := p.deleteModule(ctx, mi.Name); uerr != nil {
				return nil, errors.Join(err, uerr)
			}
		}
		return nil, err
	}
	return mi, nil
}

// sameBuild compares the loaded module's build-id with the file's, when both have one.
func (p *Patcher) sameBuild(mi *ModInfo) error {
	if len(mi.BuildID) == 0 {
		return nil
	}
	notes, err := os.ReadFile(p.path("sys/module", mi.Name, "notes", ".note.gnu.build-id"))
	if err != nil {
		return nil // no notes: the kernel does not tell, so trust the name
	}
	loaded := elfsafe.FindBuildIDNote(notes, binary.LittleEndian)
	if loaded == nil || bytes.Equal(loaded, mi.BuildID) {
		return nil
	}
	return fmt.Errorf("module %s: %w (loaded build-id %x, file has %x)", mi.Name, ErrOtherModule, loaded, mi.BuildID)
}

// Enable enables a registered patch: a no-op if it is enabled, a reversal of a
// disable in progress otherwise. A patch whose disable finished returns ErrNeedsReload.
func (p *Patcher) Enable(ctx context.Context, name string) error {
	return p.set(ctx, name, true)
}

// Disable disables the named patch and waits for the transition; the module stays
// loaded. A stalled transition is reversed (the patch stays enabled) and reported.
func (p *Patcher) Disable(ctx context.Context, name string) error {
	return p.set(ctx, name, false)
}

func (p *Patcher) set(ctx context.Context, name string, enable bool) error {
	st, err := p.Status(name)
	if err != nil {
		return err
	}
	switch st.State {
	case Unloaded:
		return fmt.Errorf("livepatch %s: %w", name, ErrNotLoaded)
	case Loaded:
		if enable {
			return fmt.Errorf("livepatch %s: %w", name, ErrNeedsReload)
		}
		return nil
	case Enabled:
		if enable {
			return nil
		}
	case Enabling:
		if enable {
			return p.wait(ctx, name, true)
		}
	case Disabling:
		if !enable {
			return p.wait(ctx, name, false)
		}
	}
	v := "0"
	if enable {
		v = "1"
	}
	if err := writeAttr(filepath.Join(p.klpDir(name), "enabled"), v); err != nil {
		if vanished(err) {
			if enable {
				return fmt.Errorf("livepatch %s: %w", name, ErrNeedsReload)
			}
			return nil // freed meanwhile: disabled
		}
		return fmt.Errorf("livepatch %s: set enabled=%s: %w", name, v, err)
	}
	return p.wait(ctx, name, enable)
}

// Unload disables the named patch if needed and unloads its module. Unloading a
// module that is not loaded is not an error.
func (p *Patcher) Unload(ctx context.Context, name string) error {
	st, err := p.Status(name)
	if err != nil {
		return err
	}
	switch st.State {
	case Unloaded:
		return nil
	case Enabled, Enabling, Disabling:
		if err := p.Disable(ctx, name); err != nil {
			return err
		}
	}
	return p.deleteModule(ctx, name)
}

// deleteModule retries while the kernel still holds the module (the patch is freed
// by a work item after the transition ends).
func (p *Patcher) deleteModule(ctx context.Context, name string) error {
	deadline := time.Now().Add(p.timeout())
	for {
		err := p.Sys.DeleteModule(name)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY), errors.Is(err, unix.EWOULDBLOCK):
			if time.Now().After(deadline) {
				return fmt.Errorf("unload module %s: %w", name, err)
			}
		default:
			return fmt.Errorf("unload module %s: %w", name, err)
		}
		if err := sleep(ctx, p.poll()); err != nil {
			return fmt.Errorf("unload module %s: %w", name, err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// settled reports whether the patch reached the target of its transition.
func (p *Patcher) settled(name string, enable bool) (bool, error) {
	st, err := p.Status(name)
	if err != nil {
		return false, err
	}
	if enable {
		switch st.State {
		case Enabled:
			return true, nil
		case Enabling:
			return false, nil
		}
		return false, fmt.Errorf("livepatch %s: %s while enabling", name, st.State)
	}
	switch st.State {
	case Loaded, Unloaded:
		return true, nil
	case Disabling:
		return false, nil
	}
	return false, fmt.Errorf("livepatch %s: %s while disabling", name, st.State)
}

// waitFor polls until the transition to enable ends, the timeout passes (false, nil)
// or ctx ends.
func (p *Patcher) waitFor(ctx context.Context, name string, enable bool, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := p.settled(name, enable)
		if ok || err != nil {
			return ok, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		if err := sleep(ctx, p.poll()); err != nil {
			return false, fmt.Errorf("livepatch %s: %w", name, err)
		}
	}
}

// wait waits for the transition towards enable; on timeout it names the stalled
// tasks, reverses the transition and waits for the reversal as long again.
func (p *Patcher) wait(ctx context.Context, name string, enable bool) error {
	ok, err := p.waitFor(ctx, name, enable, p.timeout())
	if ok || err != nil {
		return err
	}
	te := &TransitionError{Patch: name, Enable: enable, Timeout: p.timeout()}
	te.Tasks, err = p.StalledTasks(enable)
	if err != nil {
		return errors.Join(te, err)
	}
	v := "1"
	if enable {
		v = "0"
	}
	if err := writeAttr(filepath.Join(p.klpDir(name), "enabled"), v); err != nil {
		if vanished(err) && !enable {
			// The disable ended just now after all and the patch was freed.
			return nil
		}
		return errors.Join(te, fmt.Errorf("livepatch %s: reverse transition: %w", name, err))
	}
	revert := p.RevertTimeout
	if revert <= 0 {
		revert = p.timeout()
	}
	ok, err = p.waitFor(ctx, name, !enable, revert)
	te.Reverted = ok
	return errors.Join(te, err)
}

// StalledTasks lists the tasks whose patch_state is not yet the target of a
// transition towards enable (1 = patched, 0 = unpatched; -1 means no transition).
func (p *Patcher) StalledTasks(enable bool) ([]Task, error) {
	notYet := "1"
	if enable {
		notYet = "0"
	}
	procs, err := os.ReadDir(p.path("proc"))
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	var out []Task
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil {
			continue
		}
		tasks, err := os.ReadDir(p.path("proc", pe.Name(), "task"))
		if err != nil {
			continue // exited
		}
		for _, te := range tasks {
			tid, err := strconv.Atoi(te.Name())
			if err != nil {
				continue
			}
			dir := p.path("proc", pe.Name(), "task", te.Name())
			ps, err := readAttr(filepath.Join(dir, "patch_state"))
			if err != nil || ps != notYet {
				continue
			}
			comm, _ := readAttr(filepath.Join(dir, "comm"))
			out = append(out, Task{Pid: pid, Tid: tid, Comm: comm})
		}
	}
	return out, nil
}
