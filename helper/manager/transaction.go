package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/syscare/syscare/helper/state"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// Transition runs op on every entity the ids name as one transaction: on the first
// failure, the entities already changed go back to their old states.
func (m *Manager) Transition(ctx context.Context, op Op, ids []string, force bool) ([]Status, error) {
	m.lockTxn(op.String())
	defer m.txn.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	es, err := m.resolve(ids)
	if err != nil {
		return nil, err
	}
	defer m.batch()()
	defer m.dropGone()
	targets := make([]State, len(es))
	for i, e := range es {
		t, err := op.target(e.State)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", op, e.Name(), err)
		}
		targets[i] = t
	}
	// Switching off goes last-in first-out, whatever order the ids came in.
	order := make([]int, len(es))
	for i := range order {
		order[i] = i
	}
	if op == OpDeactive || op == OpRemove {
		sort.SliceStable(order, func(a, b int) bool { return es[order[a]].activated > es[order[b]].activated })
	}
	var done changes
	for _, i := range order {
		e, t := es[i], targets[i]
		if e.State == t {
			continue
		}
		done.record(e)
		if err := m.walk(ctx, e, t, force); err != nil {
			return nil, m.rollback(ctx, fmt.Errorf("%s %s: %w", op, e.Name(), err), done)
		}
	}
	out := make([]Status, len(es))
	for i, e := range es {
		out[i] = status(e)
	}
	return out, nil
}

// changes records the state of each entity before a transaction first moved it, in the
// order the transaction moved them: what rollback takes them back to.
type changes []change

type change struct {
	e   *Entity
	old State
}

func (c *changes) record(e *Entity) { *c = append(*c, change{e, e.State}) }

// rollback takes every entity done changed back to its old state, last changed first,
// after err stopped the transaction; it returns err, joined with whatever could not be
// undone.
func (m *Manager) rollback(ctx context.Context, err error, done changes) error {
	var rbErrs []error
	for j := len(done) - 1; j >= 0; j-- {
		c := done[j]
		if c.e.State == c.old {
			continue
		}
		if rerr := m.walk(context.WithoutCancel(ctx), c.e, c.old, true); rerr != nil {
			rbErrs = append(rbErrs, fmt.Errorf("rollback of %s to %s: %w", c.e.Name(), c.old, rerr))
		}
	}
	if len(rbErrs) > 0 {
		m.cfg.Log.WithError(errors.Join(rbErrs...)).Error("rollback incomplete")
		return errors.Join(append([]error{err}, rbErrs...)...)
	}
	return err
}

// Check verifies every entity the ids name without changing anything.
func (m *Manager) Check(ctx context.Context, ids []string) ([]Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	es, err := m.resolve(ids)
	if err != nil {
		return nil, err
	}
	defer m.batch()()
	var errs []error
	out := make([]Status, len(es))
	for i, e := range es {
		if err := m.verify(ctx, e); err != nil {
			errs = append(errs, fmt.Errorf("check %s: %w", e.Name(), err))
		}
		out[i] = status(e)
	}
	return out, errors.Join(errs...)
}

// walk moves e one step at a time to target, recording each state reached.
func (m *Manager) walk(ctx context.Context, e *Entity, target State, force bool) error {
	for e.State != target {
		var err error
		if e.State < target {
			err = m.up(ctx, e, force)
		} else {
			err = m.down(ctx, e, force)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (m *Manager) up(ctx context.Context, e *Entity, force bool) error {
	d, _ := m.driver(e)
	defer m.timed(e, "up from "+e.State.String())()
	switch e.State {
	case NotApplied:
		if err := m.verify(ctx, e); err != nil {
			return err
		}
		if err := d.Load(ctx, e); err != nil {
			return fmt.Errorf("load: %w", err)
		}
		m.set(e, Deactived)
	case Deactived:
		if e.Patch.Gone {
			return fmt.Errorf("%w: patch directory %s is gone", ErrVerify, e.Patch.Dir)
		}
		if !force {
			if err := m.conflicts(e); err != nil {
				return err
			}
		}
		if err := m.flip(ctx, d, e, force, Present); err != nil {
			return err
		}
		m.seq++
		e.activated = m.seq
		m.set(e, Actived)
	case Actived:
		m.set(e, Accepted)
	}
	return nil
}

func (m *Manager) down(ctx context.Context, e *Entity, force bool) error {
	d, _ := m.driver(e)
	defer m.timed(e, "down from "+e.State.String())()
	switch e.State {
	case Accepted:
		m.set(e, Actived)
	case Actived:
		if err := m.stackedOn(e); err != nil {
			return err
		}
		if err := m.flip(ctx, d, e, force, Absent); err != nil {
			return err
		}
		e.activated = 0
		m.set(e, Deactived)
	case Deactived:
		if err := d.Unload(ctx, e); err != nil {
			return fmt.Errorf("unload: %w", err)
		}
		m.set(e, NotApplied)
	}
	return nil
}

// dropGone forgets patches whose directory is gone once nothing of them is applied.
func (m *Manager) dropGone() {
	for _, p := range m.patches {
		if p.Gone && !m.applied(p) {
			m.drop(p)
		}
	}
}

// batch tells every Batcher driver that a transaction starts, and returns the function
// that ends it.
func (m *Manager) batch() func() {
	m.pkgChecked = map[string]error{}
	var bs []Batcher
	for _, d := range m.cfg.Drivers {
		if b, ok := d.(Batcher); ok {
			b.Begin()
			bs = append(bs, b)
		}
	}
	return func() {
		m.pkgChecked = nil
		for _, b := range bs {
			b.End()
		}
	}
}

// timed logs how long a step took, at debug level.
func (m *Manager) timed(e *Entity, step string) func() {
	start := time.Now()
	return func() {
		m.cfg.Log.WithFields(map[string]any{"patch": e.Name(), "step": step, "took": time.Since(start).String()}).Debug("step")
	}
}

// flip activates (want Present) or deactivates (want Absent) the entity, then reads the
// running system back; when it does not read as wanted, the opposite switch (forced,
// and not cancelled with ctx) puts the entity back as it was.
func (m *Manager) flip(ctx context.Context, d Driver, e *Entity, force bool, want Presence) error {
	do, undo, name, back := d.Activate, d.Deactivate, "activate", "deactivate again"
	if want == Absent {
		do, undo, name, back = d.Deactivate, d.Activate, "deactivate", "activate again"
	}
	if err := do(ctx, e, force); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := m.recheck(ctx, d, e, want); err != nil {
		if uerr := undo(context.WithoutCancel(ctx), e, true); uerr != nil {
			err = errors.Join(err, fmt.Errorf("%s: %w", back, uerr))
		}
		return err
	}
	return nil
}

// recheck reads the real state after a transition and fails if it does not match.
func (m *Manager) recheck(ctx context.Context, d Driver, e *Entity, want Presence) error {
	pr, err := d.Presence(ctx, []*Entity{e})
	if err != nil {
		return fmt.Errorf("re-read state: %w", err)
	}
	got, ok := pr[e]
	if !ok || got == NoTarget || got == want {
		return nil
	}
	return fmt.Errorf("re-read state: patch is %s in the running system, want %s", got, want)
}

// set records a state change: it is persisted before anything else happens.
func (m *Manager) set(e *Entity, s State) {
	old := e.State
	e.State = s
	m.seq++
	e.seq = m.seq
	m.cfg.Log.WithFields(map[string]any{"patch": e.Name(), "uuid": e.UUID(), "from": old.String(), "to": s.String()}).Info("state changed")
	if err := m.persist(); err != nil {
		m.cfg.Log.WithError(err).Error("write state")
	}
	if m.cfg.OnChange != nil {
		m.cfg.OnChange(e, old, s)
	}
}

func (m *Manager) snapshot() *state.Snapshot {
	snap := &state.Snapshot{BootID: m.bootID, Seq: m.seq}
	for _, e := range m.entities {
		if e.State == NotApplied {
			continue
		}
		snap.Entries = append(snap.Entries, state.Entry{UUID: e.UUID(), Patch: e.Patch.Meta.UUID,
			State: e.State.String(), Seq: e.seq, Activated: e.activated, Name: e.Name(), Target: e.Meta.TargetPath})
	}
	sort.Slice(snap.Entries, func(i, j int) bool { return snap.Entries[i].Seq < snap.Entries[j].Seq })
	return snap
}

func (m *Manager) persist() error { return m.store.Save(state.CurrentFile, m.snapshot()) }

// conflicts refuses to activate e over a function another active entity replaces.
func (m *Manager) conflicts(e *Entity) error {
	for _, o := range m.activeOnSameTarget(e) {
		if f := sharedFunc(e, o); f != "" {
			return fmt.Errorf("%w: %s replaces %s, which active patch %s already replaces (use --force to stack it)",
				ErrConflict, e.Name(), f, o.Name())
		}
	}
	return nil
}

// stackedOn refuses to deactivate e while a later active entity replaces one of its
// functions: stacked patches come off last-in first-out.
func (m *Manager) stackedOn(e *Entity) error {
	for _, o := range m.activeOnSameTarget(e) {
		if o.activated > e.activated {
			if f := sharedFunc(e, o); f != "" {
				return fmt.Errorf("%w: %s is stacked on %s (function %s): deactivate %s first",
					ErrConflict, o.Name(), e.Name(), f, o.Name())
			}
		}
	}
	return nil
}

func (m *Manager) activeOnSameTarget(e *Entity) []*Entity {
	var out []*Entity
	for _, o := range m.entities {
		if o != e && o.State >= Actived && o.Kind() == e.Kind() && o.Meta.TargetPath == e.Meta.TargetPath {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].activated < out[j].activated })
	return out
}

func sharedFunc(a, b *Entity) string {
	for _, fa := range a.Meta.Functions {
		for _, fb := range b.Meta.Functions {
			if fa.Name == fb.Name && fa.Pos == fb.Pos {
				return fa.Name
			}
		}
	}
	return ""
}

// verify runs the checks before loading: patch file digest, exact target package, and
// what the driver checks (build-id).
func (m *Manager) verify(ctx context.Context, e *Entity) error {
	if e.Patch.Gone {
		return fmt.Errorf("%w: patch directory %s is gone", ErrVerify, e.Patch.Dir)
	}
	sum, err := patchmeta.FileSHA256(e.File())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrVerify, err)
	}
	if sum != e.Meta.SHA256 {
		return fmt.Errorf("%w: %s: sha256 %s does not match patch.json (%s)", ErrVerify, e.Meta.File, sum, e.Meta.SHA256)
	}
	if e.Kind() == patchmeta.KindUser || e.Kind() == patchmeta.KindKernel {
		// One rpm query per target package and transaction: many patches share a target.
		nevra := e.Patch.Meta.Target.NEVRA()
		err, ok := m.pkgChecked[nevra]
		if !ok {
			err = m.cfg.VerifyPackage(ctx, m.cfg.Root, e.Patch.Meta.Target)
			if m.pkgChecked != nil {
				m.pkgChecked[nevra] = err
			}
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrVerify, err)
		}
	}
	d, _ := m.driver(e)
	if err := d.Check(ctx, e); err != nil {
		if errors.Is(err, ErrNotSupported) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrVerify, err)
	}
	return nil
}

// Save records every entity's state in the order reached.
func (m *Manager) Save() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.store.Save(state.SavedFile, m.snapshot())
}

// Restore replays the saved states: with acceptedOnly only ACCEPTED entries, otherwise
// every entity goes to its saved state (NOT-APPLIED when it was not saved).
func (m *Manager) Restore(ctx context.Context, acceptedOnly bool) ([]Status, error) {
	m.lockTxn("restore")
	defer m.txn.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	snap, err := m.store.Load(state.SavedFile)
	if err != nil {
		return nil, err
	}
	defer m.batch()()
	return m.replay(ctx, snap, acceptedOnly)
}

func (m *Manager) replay(ctx context.Context, snap *state.Snapshot, acceptedOnly bool) ([]Status, error) {
	want := map[*Entity]State{}
	var order []*Entity
	var errs []error
	for _, en := range snap.Sorted() {
		e, ok := m.entities[en.UUID]
		if !ok {
			errs = append(errs, fmt.Errorf("%w: saved entity %s is not installed", ErrNotFound, en.UUID))
			continue
		}
		s, err := state.Parse(en.State, ParseState)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if acceptedOnly && s != Accepted {
			continue
		}
		want[e] = s
		order = append(order, e)
	}
	if !acceptedOnly {
		for _, e := range m.entities {
			if _, ok := want[e]; !ok && e.State != NotApplied {
				want[e] = NotApplied
			}
		}
	}
	// First everything that goes down, last-in first-out; then up, in the saved order.
	var downs []*Entity
	for e, s := range want {
		if s < e.State {
			downs = append(downs, e)
		}
	}
	sort.Slice(downs, func(i, j int) bool { return downs[i].activated > downs[j].activated })
	for _, e := range downs {
		if err := m.walk(ctx, e, want[e], true); err != nil {
			errs = append(errs, fmt.Errorf("restore %s to %s: %w", e.Name(), want[e], err))
		}
	}
	var out []Status
	for _, e := range order {
		if e.State < want[e] {
			if err := m.walk(ctx, e, want[e], true); err != nil {
				errs = append(errs, fmt.Errorf("restore %s to %s: %w", e.Name(), want[e], err))
			}
		}
		out = append(out, status(e))
	}
	return out, errors.Join(errs...)
}

// Start discovers the patches and rebuilds state: from the running system (in-process
// headers) where it can tell, from the state file otherwise. Patches that are switched on
// in the system stay on; ACCEPTED ones come back; a patch whose processes were all
// restarted, or that was in any state before a reboot other than ACCEPTED, is NOT-APPLIED.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Only this process writes the state directory (the bus name is unique): a temp
	// file there is what a crash in WriteFileAtomic left behind.
	removed, err := m.store.CleanTemp()
	for _, p := range removed {
		m.cfg.Log.WithField("file", p).Info("removed temp file left by a crash")
	}
	if err != nil {
		m.cfg.Log.WithError(err).Warn("clean state directory")
	}
	m.scan()
	defer m.batch()()
	snap, err := m.store.Load(state.CurrentFile)
	lost := false
	if err != nil {
		m.cfg.Log.WithError(err).Error("state file unreadable; moved aside, state is rebuilt from the running system")
		p := filepath.Join(m.store.Dir, state.CurrentFile)
		os.Rename(p, p+".bad")
		snap, lost = &state.Snapshot{}, true
	}
	if _, err := os.Stat(filepath.Join(m.store.Dir, state.CurrentFile)); errors.Is(err, os.ErrNotExist) {
		lost = true
	}
	sameBoot := snap.BootID != "" && snap.BootID == m.bootID
	m.seq = snap.Seq
	live := m.rebuildLive(ctx, snap)
	stored := map[*Entity]state.Entry{}
	for _, en := range snap.Entries {
		if e, ok := m.entities[en.UUID]; ok {
			stored[e] = en
		} else {
			m.cfg.Log.WithField("uuid", en.UUID).Warn("state file names an entity that is not installed")
		}
	}
	// Ask the system about every entity the state file knows or a process holds, or
	// about all of them when the state file is gone (then in-process headers are the
	// only record).
	byDriver := map[Driver][]*Entity{}
	for _, e := range m.entities {
		if e.Patch.Rebuilt {
			continue // its state is set already
		}
		if _, ok := stored[e]; ok || lost || live[e.UUID()] {
			d, _ := m.driver(e)
			byDriver[d] = append(byDriver[d], e)
		}
	}
	presence := map[*Entity]Presence{}
	for d, es := range byDriver {
		pr, err := d.Presence(ctx, es)
		if err != nil {
			m.cfg.Log.WithError(err).Warn("read patch state from the system")
		}
		for e, p := range pr {
			presence[e] = p
		}
	}
	type goal struct {
		e         *Entity
		s         State
		seq, actv uint64
	}
	var goals []goal
	for e, p := range presence {
		en, known := stored[e]
		prev := NotApplied
		if known {
			prev, _ = ParseState(en.State)
		}
		g := NotApplied
		switch {
		case p == Present || p == Partial:
			g = max(prev, Actived)
		case prev == Accepted:
			g = Accepted
		case sameBoot && p == NoTarget:
			g = prev
		case sameBoot && prev == Deactived:
			g = Deactived
		}
		if g != NotApplied {
			goals = append(goals, goal{e, g, en.Seq, en.Activated})
		}
	}
	sort.Slice(goals, func(i, j int) bool {
		if goals[i].actv != goals[j].actv {
			return goals[i].actv < goals[j].actv
		}
		return goals[i].seq < goals[j].seq
	})
	var errs []error
	for _, g := range goals {
		// Entities already switched on in the system go through Activate too: it patches
		// the processes that started while the helper was away and skips the others.
		if err := m.walk(ctx, g.e, g.s, true); err != nil {
			errs = append(errs, fmt.Errorf("restore %s to %s: %w", g.e.Name(), g.s, err))
		}
	}
	if err := m.persist(); err != nil {
		errs = append(errs, fmt.Errorf("write state: %w", err))
	}
	return errors.Join(errs...)
}

// rebuildLive gives back to the manager the patches that are live inside processes but
// have no patch directory (an RPM upgrade or a disk problem hid it while the helper
// was away). Their headers, with what the state file recorded, are all that is known:
// they are listed as gone, keep their state, and can be deactivated and removed by
// uuid, never activated again until their directory is back.
func (m *Manager) rebuildLive(ctx context.Context, snap *state.Snapshot) (live map[string]bool) {
	live = map[string]bool{}
	stored := map[string]state.Entry{}
	for _, en := range snap.Entries {
		stored[en.UUID] = en
	}
	for _, d := range m.cfg.Drivers {
		lr, ok := d.(LiveReporter)
		if !ok {
			continue
		}
		lps, err := lr.Live(ctx)
		if err != nil {
			m.cfg.Log.WithError(err).Warn("read patch headers from processes")
		}
		for _, lp := range lps {
			if !m.underRoot(lp.Target) {
				continue
			}
			live[lp.UUID] = true
			if _, ok := m.entities[lp.UUID]; ok {
				continue
			}
			if p, ok := m.patches[lp.UUID]; ok {
				m.cfg.Log.WithFields(map[string]any{"uuid": lp.UUID, "patch": p.Meta.UUID}).
					Warn("a process holds a patch under the uuid of an installed patch, not of an entity")
				continue
			}
			e := m.addRebuilt(lp, stored[lp.UUID])
			m.cfg.Log.WithFields(map[string]any{"patch": e.Name(), "uuid": e.UUID(), "state": e.State.String(),
				"pids": lp.Pids}).Warn("patch is live in processes but its directory is missing")
		}
	}
	return live
}

// underRoot tells whether a file a process maps belongs to the system this manager
// looks after: with a root prefix (a scratch root, a test's sandbox), only files under
// it do; processes patched by other instances on the same host are theirs.
func (m *Manager) underRoot(path string) bool {
	if m.cfg.Root == "" || m.cfg.Root == "/" {
		return true
	}
	root := filepath.Clean(m.cfg.Root)
	return strings.HasPrefix(filepath.Clean(path), root+"/")
}

// addRebuilt records a live patch without directory from its header and state entry.
func (m *Manager) addRebuilt(lp LivePatch, en state.Entry) *Entity {
	target := en.Target
	if target == "" {
		target = m.guestPath(strings.TrimSuffix(lp.Target, " (deleted)"))
	}
	me := patchmeta.Entity{UUID: lp.UUID, TargetPath: target}
	for _, f := range lp.Funcs {
		me.Functions = append(me.Functions, patchmeta.Function{Name: f})
	}
	patchUUID := en.Patch
	p := m.patches[patchUUID]
	if patchUUID == "" || (p != nil && !p.Rebuilt) || m.entities[patchUUID] != nil {
		patchUUID, p = lp.UUID, nil
	}
	if p == nil {
		meta := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: patchUUID, Kind: patchmeta.KindUser,
			Description: "rebuilt from the running processes: the patch directory is missing"}
		p = &Patch{Meta: meta, Dir: filepath.Join(m.cfg.Root, PatchesDir, patchUUID), Gone: true, Rebuilt: true}
		m.patches[patchUUID] = p
	}
	p.Meta.Entities = append(p.Meta.Entities, me)
	e := &Entity{Patch: p, Meta: me, name: en.Name}
	if e.name == "" {
		e.name = "?/" + patchUUID + "/" + filepath.Base(target)
	}
	prev, err := ParseState(en.State)
	if err != nil {
		prev = NotApplied
	}
	e.State = max(prev, Actived)
	e.seq, e.activated = en.Seq, en.Activated
	if e.activated == 0 {
		m.seq++
		e.activated = m.seq
	}
	if e.seq == 0 {
		e.seq = e.activated
	}
	p.Entities = append(p.Entities, e)
	m.entities[lp.UUID] = e
	return e
}

// guestPath turns a host path back into the path under the root prefix.
func (m *Manager) guestPath(host string) string {
	if m.cfg.Root == "" || m.cfg.Root == "/" {
		return host
	}
	if rel, err := filepath.Rel(m.cfg.Root, host); err == nil && !strings.HasPrefix(rel, "..") {
		return "/" + rel
	}
	return host
}

// Broken returns the broken patch directories.
func (m *Manager) Broken() []Broken {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Broken(nil), m.broken...)
}
