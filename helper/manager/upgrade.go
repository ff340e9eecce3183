package manager

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/syscare/syscare/dbus"
)

// UpgradeOptions says how far Upgrade takes the patches it is given.
type UpgradeOptions struct {
	// Accept takes them to ACCEPTED (back after a reboot) instead of ACTIVED.
	Accept bool
	// Force activates over a conflicting patch and lets the superseded patches go even
	// where the engine would refuse (as Transition's force does).
	Force bool
	// NoSupersede leaves the other patches of the targets as they are (apply with a
	// health gate: only the named patches move).
	NoSupersede bool
	// Health gates the upgrade: checks run over a soak after activation, and a failed
	// one rolls the whole upgrade back.
	Health HealthGate
}

// UpgradeResult is what Upgrade did to one entity: the state it was in, the state it is
// in now, and the action (syscarebus.Upgrade*) with its reason.
type UpgradeResult struct {
	Status
	From   State
	Action string
	Detail string
}

// upgradeStep is one entity Upgrade moves, planned before anything changes.
type upgradeStep struct {
	e      *Entity
	from   State
	to     State
	action string
	detail string
}

// Upgrade is the host's patch upgrade policy, run as one transaction: the patches the
// ids name (an entity id stands for its whole patch) replace every other patch of the
// same target package (cumulative patches: the older ones are superseded and go to
// NOT-APPLIED first, last activated first, so that two patches never replace the same
// function), then go to ACTIVED, or ACCEPTED with opts.Accept; a patch already there
// stays as it is. With health checks (opts.Health) that apply to a patch that moved,
// the checks run over the soak once everything is ACTIVED, and only a healthy soak
// goes on to ACCEPTED. On the first failure, a failed health check included, every
// entity already moved goes back to its old state, the superseded patches included,
// and the error names the entity and step (or the check and its output) that failed
// and the entities put back.
func (m *Manager) Upgrade(ctx context.Context, ids []string, opts UpgradeOptions) ([]UpgradeResult, error) {
	m.lockTxn("upgrade")
	defer m.txn.Unlock()
	m.mu.Lock()
	locked := true
	defer func() {
		if locked {
			m.mu.Unlock()
		}
	}()
	// The caller has usually just installed the patch RPMs: read the directories now
	// rather than wait for the directory watch.
	m.scan()
	es, err := m.resolve(ids)
	if err != nil {
		return nil, err
	}
	endBatch := m.batch()
	defer func() { endBatch() }()
	defer m.dropGone()
	var steps []upgradeStep
	if !opts.NoSupersede {
		steps = m.supersededBy(patchesOf(es))
	}
	steps = append(steps, upgradeSteps(patchesOf(es), opts.Accept)...)
	checks := opts.Health.checksFor(movedPatches(steps))
	fail := func(err error, done changes, at *Entity) error {
		err = m.rollback(ctx, err, done)
		if back := done.putBack(at); back != "" {
			err = fmt.Errorf("%w; put back: %s", err, back)
		}
		return err
	}
	var done changes
	for _, s := range steps {
		to := s.to
		if len(checks) > 0 && to == Accepted && s.from != Accepted {
			to = Actived // accepted only after a healthy soak
		}
		if s.e.State == to {
			continue
		}
		done.record(s.e)
		if err := m.walk(ctx, s.e, to, opts.Force); err != nil {
			return nil, fail(fmt.Errorf("%s %s: %w", s.op(), s.e.Name(), err), done, s.e)
		}
	}
	healthy := ""
	if len(checks) > 0 {
		// The lock is let go over the soak: processes of the target that start meanwhile
		// must be patched (PatchNewProcess), and reads go on. m.txn keeps every other
		// transaction out until this one ends.
		endBatch()
		m.mu.Unlock()
		locked = false
		runs, ferr := soak(ctx, checks, opts.Health, m.cfg.Log)
		m.mu.Lock()
		locked = true
		endBatch = m.batch()
		if ferr != nil {
			return nil, fail(ferr, done, nil)
		}
		healthy = fmt.Sprintf("healthy: %d run(s) of %s over %s", runs, checkNames(checks), opts.Health.Soak)
		for _, s := range steps {
			if s.to != Accepted || s.e.State == Accepted {
				continue
			}
			done.record(s.e)
			if err := m.walk(ctx, s.e, Accepted, opts.Force); err != nil {
				return nil, fail(fmt.Errorf("%s %s: %w", OpAccept, s.e.Name(), err), done, s.e)
			}
		}
	}
	out := make([]UpgradeResult, len(steps))
	for i, s := range steps {
		out[i] = UpgradeResult{Status: status(s.e), From: s.from, Action: s.action, Detail: s.detail}
		if healthy != "" && s.to != NotApplied && s.from != s.to {
			out[i].Detail = healthy
		}
	}
	return out, nil
}

// lockTxn takes the transaction lock, and says in the log when another transaction (a
// health soak, a timer run) holds it, so that a wait is never silent.
func (m *Manager) lockTxn(what string) {
	if m.txn.TryLock() {
		return
	}
	m.cfg.Log.WithField("op", what).Info("another transaction holds the helper; waiting for it to end")
	m.txn.Lock()
}

// movedPatches returns the patches of the steps that change an entity, superseded ones
// left out: the health checks are about what comes in.
func movedPatches(steps []upgradeStep) []*Patch {
	var out []*Patch
	seen := map[*Patch]bool{}
	for _, s := range steps {
		if s.to == s.from || s.to == NotApplied || seen[s.e.Patch] {
			continue
		}
		seen[s.e.Patch] = true
		out = append(out, s.e.Patch)
	}
	return out
}

// putBack lists the entities of c other than failed that are in their old state again,
// as "name (STATE)", for the error that tells what a failed upgrade undid.
func (c changes) putBack(failed *Entity) string {
	var out []string
	for _, ch := range c {
		if ch.e != failed && ch.e.State == ch.old {
			out = append(out, fmt.Sprintf("%s (%s)", ch.e.Name(), ch.old))
		}
	}
	return strings.Join(out, ", ")
}

// supersededBy plans switching off the applied entities of every other patch of the
// targets of newer, last activated first.
func (m *Manager) supersededBy(newer []*Patch) []upgradeStep {
	isNew := map[*Patch]bool{}
	for _, p := range newer {
		isNew[p] = true
	}
	var out []upgradeStep
	for _, q := range m.sortedPatches() {
		if isNew[q] || q.Rebuilt {
			continue // a rebuilt patch has no target package to compare
		}
		for _, p := range newer {
			if q.Meta.Kind != p.Meta.Kind || q.Meta.Target.NVR() != p.Meta.Target.NVR() {
				continue
			}
			for _, e := range q.Entities {
				if e.State != NotApplied {
					out = append(out, upgradeStep{e: e, from: e.State, to: NotApplied, action: syscarebus.UpgradeSuperseded,
						detail: "superseded by " + p.Meta.Name + "-" + p.Meta.Version + "-" + p.Meta.Release})
				}
			}
			break
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].e.activated > out[b].e.activated })
	return out
}

// upgradeSteps plans taking every entity of ps to ACTIVED (ACCEPTED with accept); an
// entity already further stays.
func upgradeSteps(ps []*Patch, accept bool) []upgradeStep {
	goal := Actived
	if accept {
		goal = Accepted
	}
	var out []upgradeStep
	for _, p := range ps {
		for _, e := range p.Entities {
			s := upgradeStep{e: e, from: e.State, to: max(e.State, goal)}
			switch {
			case s.to == s.from:
				s.action = syscarebus.UpgradeUnchanged
			case s.from == NotApplied:
				s.action = syscarebus.UpgradeApplied
			case s.from == Deactived:
				s.action = syscarebus.UpgradeActivated
			default:
				s.action = syscarebus.UpgradeAccepted
			}
			out = append(out, s)
		}
	}
	return out
}

// op names the state machine command a step runs, for errors.
func (s upgradeStep) op() Op {
	switch {
	case s.to == NotApplied:
		return OpRemove
	case s.from == NotApplied:
		return OpApply
	case s.from == Deactived:
		return OpActive
	}
	return OpAccept
}
