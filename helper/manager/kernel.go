package manager

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/kpatch"
)

// KernelDriver drives kernel patches: each entity is a livepatch module. Apply checks the
// module (livepatch, built for the running release, vmlinux build-id) and loads it, which
// enables it; deactivate disables it (the module stays loaded, so activating again reloads
// it); remove unloads it. Presence comes from sysfs, so a restarted helper sees what is
// enabled.
type KernelDriver struct {
	K *kpatch.Patcher
}

// NewKernelDriver returns the driver of the running kernel; sysfs and procfs are read
// under root, as every other path of the helper. Under a root prefix (a sandbox) module
// loading is refused: the kernel is the host's, and its sysfs is not under the prefix.
func NewKernelDriver(root string) *KernelDriver {
	k := kpatch.New()
	if root != "" && filepath.Clean(root) != "/" {
		k.Root = root
		k.Sys = prefixedKernel{}
	}
	return &KernelDriver{K: k}
}

// prefixedKernel refuses module syscalls under a root prefix.
type prefixedKernel struct{}

func (prefixedKernel) FinitModule(*os.File, string) error {
	return fmt.Errorf("%w: loading kernel modules under a root prefix", ErrNotSupported)
}

func (prefixedKernel) DeleteModule(string) error {
	return fmt.Errorf("%w: unloading kernel modules under a root prefix", ErrNotSupported)
}

// moduleName is the entity's module name: from the module read by Load, from the file
// otherwise (a restarted helper), and from the file name when the file is gone.
func (d *KernelDriver) moduleName(e *Entity) string {
	if mi, ok := e.Data.(*kpatch.ModInfo); ok {
		return mi.Name
	}
	if mi, err := kpatch.ReadModInfo(e.File()); err == nil {
		return mi.Name
	}
	return strings.ReplaceAll(strings.TrimSuffix(e.Meta.File, ".ko"), "-", "_")
}

// Check verifies the module against the running kernel: livepatch=Y, vermagic release
// equal to uname -r, and, when patch.json has one, the running vmlinux build-id
// (/sys/kernel/notes).
func (d *KernelDriver) Check(_ context.Context, e *Entity) error {
	if _, err := d.K.Check(e.File()); err != nil {
		return err
	}
	if e.Meta.BuildID == "" {
		return nil
	}
	notes := filepath.Join("/", d.K.Root, "sys/kernel/notes")
	b, err := os.ReadFile(notes)
	if err != nil {
		return fmt.Errorf("kernel build-id: %w", err)
	}
	id := elfsafe.FindBuildIDNote(b, binary.LittleEndian)
	if id == nil {
		return fmt.Errorf("kernel build-id: no GNU build-id note in %s", notes)
	}
	if got := hex.EncodeToString(id); got != e.Meta.BuildID {
		return fmt.Errorf("kernel build-id %s, patch is for %s", got, e.Meta.BuildID)
	}
	return nil
}

// Load reads the module's metadata; the running system is not touched.
func (d *KernelDriver) Load(_ context.Context, e *Entity) error {
	mi, err := kpatch.ReadModInfo(e.File())
	if err != nil {
		return err
	}
	e.Data = mi
	return nil
}

// Unload disables the patch if needed and unloads its module.
func (d *KernelDriver) Unload(ctx context.Context, e *Entity) error {
	if err := d.K.Unload(ctx, d.moduleName(e)); err != nil {
		return classifyKernel(err)
	}
	e.Data = nil
	return nil
}

// Activate loads (or reloads) the module, which enables the patch, and waits for every
// task to switch. A transition that stalls is reversed: nothing is left changed. force
// does not override that (the kernel's force attribute skips the safety of the
// consistency model, which this helper never does on its own).
func (d *KernelDriver) Activate(ctx context.Context, e *Entity, _ bool) error {
	if _, err := d.K.Load(ctx, e.File()); err != nil {
		return classifyKernel(err)
	}
	return nil
}

// Deactivate disables the patch and waits for the transition; the module stays loaded.
func (d *KernelDriver) Deactivate(ctx context.Context, e *Entity, _ bool) error {
	err := d.K.Disable(ctx, d.moduleName(e))
	if errors.Is(err, kpatch.ErrNotLoaded) {
		return nil
	}
	return classifyKernel(err)
}

// Presence reads each entity's patch from sysfs: enabled is present, a transition in
// either direction is partial, anything else absent.
func (d *KernelDriver) Presence(_ context.Context, es []*Entity) (map[*Entity]Presence, error) {
	out := make(map[*Entity]Presence, len(es))
	var errs []error
	for _, e := range es {
		st, err := d.K.Status(d.moduleName(e))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.Name(), err))
			continue
		}
		switch st.State {
		case kpatch.Enabled:
			out[e] = Present
		case kpatch.Enabling, kpatch.Disabling:
			out[e] = Partial
		default:
			out[e] = Absent
		}
	}
	return out, errors.Join(errs...)
}

// classifyKernel wraps a livepatch error in its kind, as classify does for the user engine.
func classifyKernel(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kpatch.ErrTransitionTimeout):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, kpatch.ErrOtherModule):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case errors.Is(err, kpatch.ErrReleaseMismatch), errors.Is(err, kpatch.ErrNotLivepatch):
		return fmt.Errorf("%w: %w", ErrVerify, err)
	}
	return err
}
