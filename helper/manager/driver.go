package manager

import (
	"context"
	"fmt"

	"github.com/syscare/syscare/runtime/patchmeta"
)

// Presence is what the running system says about an entity.
type Presence int

// Presences.
const (
	// Absent: targets exist and none has the patch.
	Absent Presence = iota
	// Present: every target has the patch.
	Present
	// Partial: some targets have the patch and some do not.
	Partial
	// NoTarget: nothing runs the target, so the system cannot tell.
	NoTarget
)

func (p Presence) String() string {
	return [...]string{"absent", "present", "partial", "no target"}[p]
}

// Driver does the work of one kind of patch (user, kernel). The manager calls it with its
// lock held, one call at a time.
type Driver interface {
	// Check verifies what only this kind can (the target ELF's build-id).
	Check(ctx context.Context, e *Entity) error
	// Load prepares e for activation without changing the running system.
	Load(ctx context.Context, e *Entity) error
	// Unload releases what Load prepared.
	Unload(ctx context.Context, e *Entity) error
	// Activate switches e on; it either succeeds everywhere or leaves nothing changed.
	Activate(ctx context.Context, e *Entity, force bool) error
	// Deactivate switches e off; it either succeeds everywhere or leaves nothing changed.
	Deactivate(ctx context.Context, e *Entity, force bool) error
	// Presence reads from the system whether each entity is switched on.
	Presence(ctx context.Context, es []*Entity) (map[*Entity]Presence, error)
}

// Batcher is a Driver that can reuse what it learns (which processes map a target)
// between Begin and End: the manager brackets each transaction with them.
type Batcher interface {
	Begin()
	End()
}

// ProcessState is the state of a user patch in one process.
type ProcessState struct {
	Pid    int
	State  State
	Detail string
	// MountNS and Container say where the process runs (see NamespaceReader).
	MountNS   uint64
	Container string
}

// NamespaceReader is an Engine that can tell where a process runs: the inode of its
// mount namespace and the container id its cgroup names ("" if none).
type NamespaceReader interface {
	Namespace(pid int) (mountNS uint64, container string, err error)
}

// ProcessReporter is a Driver that can tell per-process state.
type ProcessReporter interface {
	Processes(ctx context.Context, e *Entity) ([]ProcessState, error)
}

// NewProcessPatcher is a Driver that patches a process started after activation.
type NewProcessPatcher interface {
	PatchNew(ctx context.Context, pid int, es []*Entity) error
}

// unsupported is the driver of a kind this helper cannot handle yet.
type unsupported struct{ kind string }

// Unsupported returns a driver that refuses every change with ErrNotSupported.
func Unsupported(kind string) Driver { return unsupported{kind} }

func (u unsupported) err() error {
	if u.kind == patchmeta.KindKernel {
		return fmt.Errorf("%w: kernel patches are not supported by this helper yet", ErrNotSupported)
	}
	return fmt.Errorf("%w: %s patches", ErrNotSupported, u.kind)
}
func (u unsupported) Check(context.Context, *Entity) error            { return u.err() }
func (u unsupported) Load(context.Context, *Entity) error             { return u.err() }
func (u unsupported) Unload(context.Context, *Entity) error           { return nil }
func (u unsupported) Activate(context.Context, *Entity, bool) error   { return u.err() }
func (u unsupported) Deactivate(context.Context, *Entity, bool) error { return u.err() }
func (u unsupported) Presence(context.Context, []*Entity) (map[*Entity]Presence, error) {
	return nil, nil
}
