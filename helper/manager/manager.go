package manager

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/helper/rpmdb"
	"github.com/syscare/syscare/helper/state"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// Paths under the root prefix.
const (
	PatchesDir = "/usr/lib/syscare/patches"
	StateDir   = "/var/lib/syscare"
)

// Patch is one installed patch directory.
type Patch struct {
	Meta     *patchmeta.Patch
	Dir      string
	Entities []*Entity
	// Gone is set when the directory disappeared while an entity was still applied;
	// the patch stays known so that it can be removed from the running system.
	Gone bool
	// Rebuilt is set when Meta was not read from patch.json but rebuilt at start from
	// the state file and the headers inside processes, because the directory was missing
	// then: it holds only what those records tell.
	Rebuilt bool
}

// Entity is the patch of one ELF file and its state.
type Entity struct {
	Patch *Patch
	Meta  patchmeta.Entity
	State State
	// seq orders entities by when they reached State; activated orders active entities
	// by when they were switched on (for the LIFO rule).
	seq       uint64
	activated uint64
	// Data belongs to the driver (a parsed patch object).
	Data any
	// name replaces the display name of a rebuilt entity (see Patch.Rebuilt).
	name string
}

// UUID returns the entity UUID.
func (e *Entity) UUID() string { return e.Meta.UUID }

// Name returns the display name <target nvr>/<patch>-<ver>-<rel>/<elf>.
func (e *Entity) Name() string {
	if e.name != "" {
		return e.name
	}
	return e.Patch.Meta.EntityName(e.Meta)
}

// Kind returns the patch kind (user or kernel).
func (e *Entity) Kind() string { return e.Patch.Meta.Kind }

// File returns the path of the entity's patch file.
func (e *Entity) File() string { return filepath.Join(e.Patch.Dir, e.Meta.File) }

// Broken is a patch directory that cannot be used, with the reason.
type Broken struct {
	Dir    string
	Reason string
}

// Status is the state of one entity, for replies.
type Status struct {
	UUID  string
	Name  string
	State State
}

// Config configures a Manager.
type Config struct {
	// Root prefixes every path (patches, state, rpmdb, targets).
	Root string
	// Drivers by patch kind; a kind without a driver is refused.
	Drivers map[string]Driver
	Log     logrus.FieldLogger
	// OnChange is called (with the manager's lock held) after each state change.
	OnChange func(e *Entity, old, new State)
	// VerifyPackage checks that the target package is installed; rpmdb.Verify by default.
	VerifyPackage func(ctx context.Context, root string, p patchmeta.Package) error
}

// Manager owns the patches and their states. Its methods are safe for concurrent use;
// commands run one at a time.
type Manager struct {
	// txn serializes the transactions that change states (taken before mu); mu guards
	// the data and is let go while a health soak runs, so that reads and new processes
	// go on.
	txn      sync.Mutex
	mu       sync.Mutex
	cfg      Config
	store    state.Store
	bootID   string
	seq      uint64
	patches  map[string]*Patch
	entities map[string]*Entity
	broken   []Broken
	// pkgChecked caches target package checks during one transaction.
	pkgChecked map[string]error
}

// New returns a manager; call Start before using it.
func New(cfg Config) *Manager {
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(os.Stderr)
		cfg.Log = l
	}
	if cfg.VerifyPackage == nil {
		cfg.VerifyPackage = rpmdb.Verify
	}
	return &Manager{
		cfg:      cfg,
		store:    state.Store{Dir: filepath.Join(cfg.Root, StateDir)},
		bootID:   state.BootID(),
		patches:  map[string]*Patch{},
		entities: map[string]*Entity{},
	}
}

// Root returns the root prefix.
func (m *Manager) Root() string { return m.cfg.Root }

// HostPath returns the path of a target on this host (under the root prefix).
func (m *Manager) HostPath(target string) string {
	if m.cfg.Root == "" || m.cfg.Root == "/" {
		return target
	}
	return filepath.Join(m.cfg.Root, target)
}

func (m *Manager) driver(e *Entity) (Driver, error) {
	d, ok := m.cfg.Drivers[e.Kind()]
	if !ok {
		return Unsupported(e.Kind()), nil
	}
	return d, nil
}

// Rescan re-reads the patch directories.
func (m *Manager) Rescan() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.scan()
}

// scan reads every patch directory; a known patch keeps its state.
func (m *Manager) scan() {
	dir := filepath.Join(m.cfg.Root, PatchesDir)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		m.cfg.Log.WithError(err).Warn("read patch directory")
	}
	m.broken = nil
	seen := map[string]bool{}
	for _, de := range ents {
		if !de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		pdir := filepath.Join(dir, de.Name())
		meta, err := patchmeta.Load(pdir)
		if err == nil && meta.UUID != de.Name() {
			err = fmt.Errorf("directory name differs from patch uuid %s", meta.UUID)
		}
		if err == nil && m.adoptRebuilt(meta, pdir) {
			seen[meta.UUID] = true
			continue
		}
		if err == nil {
			err = m.checkUnique(meta)
		}
		if err != nil {
			m.broken = append(m.broken, Broken{Dir: de.Name(), Reason: err.Error()})
			continue
		}
		seen[meta.UUID] = true
		if p, ok := m.patches[meta.UUID]; ok {
			// Keep the metadata an applied patch was loaded with.
			p.Gone = false
			if !m.applied(p) {
				m.replace(p, meta, pdir)
			}
			continue
		}
		m.add(meta, pdir)
	}
	for id, p := range m.patches {
		if seen[id] {
			continue
		}
		if m.applied(p) {
			p.Gone = true
			continue
		}
		m.drop(p)
	}
}

// adoptRebuilt gives a patch that was rebuilt from the running system its directory
// back (the RPM upgrade that removed it has finished): the entities keep their states,
// and the active ones are loaded again so that new processes get them too. It reports
// whether meta replaced a rebuilt patch.
func (m *Manager) adoptRebuilt(meta *patchmeta.Patch, dir string) bool {
	var olds []*Patch
	for _, me := range meta.Entities {
		if e, ok := m.entities[me.UUID]; ok && e.Patch.Rebuilt && !slices.Contains(olds, e.Patch) {
			olds = append(olds, e.Patch)
		}
	}
	if p, ok := m.patches[meta.UUID]; ok && p.Rebuilt && !slices.Contains(olds, p) {
		olds = append(olds, p)
	}
	if len(olds) == 0 {
		return false
	}
	prev := map[string]*Entity{}
	for _, p := range olds {
		for _, e := range p.Entities {
			prev[e.UUID()] = e
		}
	}
	reason := ""
	for _, id := range slices.Sorted(maps.Keys(prev)) {
		if !slices.ContainsFunc(meta.Entities, func(me patchmeta.Entity) bool { return me.UUID == id }) && prev[id].State != NotApplied {
			reason = fmt.Sprintf("entity %s is live in processes but not in this patch.json", id)
			break
		}
	}
	for _, p := range olds {
		m.drop(p)
	}
	if reason == "" {
		if err := m.checkUnique(meta); err != nil {
			reason = err.Error()
		}
	}
	if reason != "" {
		// The rebuilt patches stay: the directory is broken, the patch is still live.
		for _, p := range olds {
			m.patches[p.Meta.UUID] = p
			for _, e := range p.Entities {
				m.entities[e.UUID()] = e
			}
		}
		m.broken = append(m.broken, Broken{Dir: filepath.Base(dir), Reason: reason})
		return true
	}
	m.add(meta, dir)
	for _, e := range m.patches[meta.UUID].Entities {
		old, ok := prev[e.UUID()]
		if !ok {
			continue
		}
		e.State, e.seq, e.activated = old.State, old.seq, old.activated
		if e.State < Deactived {
			continue
		}
		d, _ := m.driver(e)
		ctx := context.Background()
		err := m.verify(ctx, e)
		if err == nil {
			err = d.Load(ctx, e)
		}
		if err == nil && e.State >= Actived {
			// As at start: processes that began while the files were missing get the
			// patch now, and new ones are watched for again.
			err = d.Activate(ctx, e, true)
		}
		log := m.cfg.Log.WithFields(map[string]any{"patch": e.Name(), "uuid": e.UUID()})
		if err != nil {
			log.WithError(err).Warn("patch directory is back but cannot be loaded; new processes will not get the patch")
		} else {
			log.Info("patch directory is back")
		}
	}
	return true
}

func (m *Manager) checkUnique(meta *patchmeta.Patch) error {
	for _, e := range meta.Entities {
		if o, ok := m.entities[e.UUID]; ok && o.Patch.Meta.UUID != meta.UUID {
			return fmt.Errorf("entity uuid %s already belongs to patch %s", e.UUID, o.Patch.Meta.UUID)
		}
		if p, ok := m.patches[e.UUID]; ok {
			return fmt.Errorf("entity uuid %s is the uuid of patch %s", e.UUID, p.Meta.UUID)
		}
	}
	if o, ok := m.entities[meta.UUID]; ok {
		return fmt.Errorf("patch uuid %s is an entity of patch %s", meta.UUID, o.Patch.Meta.UUID)
	}
	return nil
}

func (m *Manager) applied(p *Patch) bool {
	for _, e := range p.Entities {
		if e.State != NotApplied {
			return true
		}
	}
	return false
}

func (m *Manager) add(meta *patchmeta.Patch, dir string) {
	p := &Patch{Meta: meta, Dir: dir}
	for _, me := range meta.Entities {
		e := &Entity{Patch: p, Meta: me}
		p.Entities = append(p.Entities, e)
		m.entities[me.UUID] = e
	}
	m.patches[meta.UUID] = p
}

func (m *Manager) drop(p *Patch) {
	for _, e := range p.Entities {
		delete(m.entities, e.UUID())
	}
	delete(m.patches, p.Meta.UUID)
}

func (m *Manager) replace(p *Patch, meta *patchmeta.Patch, dir string) {
	m.drop(p)
	m.add(meta, dir)
}

// sortedPatches returns the patches in a stable order (target, name, version, uuid).
func (m *Manager) sortedPatches() []*Patch {
	ps := make([]*Patch, 0, len(m.patches))
	for _, p := range m.patches {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool {
		a, b := ps[i].Meta, ps[j].Meta
		if a.Target.NVR() != b.Target.NVR() {
			return a.Target.NVR() < b.Target.NVR()
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Version+"-"+a.Release != b.Version+"-"+b.Release {
			return a.Version+"-"+a.Release < b.Version+"-"+b.Release
		}
		return a.UUID < b.UUID
	})
	return ps
}

// ListEntry is one row of List.
type ListEntry struct {
	Status
	PatchUUID string
	Problem   string
}

// List returns every entity and every broken patch directory.
func (m *Manager) List() ([]ListEntry, []Broken) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ListEntry
	var live map[string][]int
	for _, p := range m.sortedPatches() {
		for _, e := range p.Entities {
			le := ListEntry{Status: status(e), PatchUUID: p.Meta.UUID}
			if p.Gone {
				if live == nil {
					live = m.livePids()
				}
				le.Problem = "patch directory removed while applied"
				if pids := live[e.UUID()]; len(pids) > 0 {
					le.Problem += "; live in " + pidList(pids)
				}
			}
			out = append(out, le)
		}
	}
	return out, append([]Broken(nil), m.broken...)
}

// livePids returns the processes that hold each patch, from the drivers that can tell.
// It is for display: errors only leave pids out.
func (m *Manager) livePids() map[string][]int {
	out := map[string][]int{}
	for _, d := range m.cfg.Drivers {
		lr, ok := d.(LiveReporter)
		if !ok {
			continue
		}
		lps, _ := lr.Live(context.Background())
		for _, lp := range lps {
			out[lp.UUID] = append(out[lp.UUID], lp.Pids...)
		}
	}
	return out
}

// pidList formats pids as "pid 1, 2, 3" (sorted).
func pidList(pids []int) string {
	pids = slices.Clone(pids)
	slices.Sort(pids)
	var b strings.Builder
	if len(pids) == 1 {
		b.WriteString("pid ")
	} else {
		b.WriteString("pids ")
	}
	for i, p := range pids {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, p)
	}
	return b.String()
}

func status(e *Entity) Status { return Status{UUID: e.UUID(), Name: e.Name(), State: e.State} }

// resolve turns identifiers into entities, in the order given, without duplicates.
func (m *Manager) resolve(ids []string) ([]*Entity, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: no patch identifier given", ErrNotFound)
	}
	var out []*Entity
	seen := map[*Entity]bool{}
	for _, id := range ids {
		es, err := m.resolveOne(id)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	return out, nil
}

func (m *Manager) resolveOne(id string) ([]*Entity, error) {
	if e, ok := m.entities[id]; ok {
		return []*Entity{e}, nil
	}
	if p, ok := m.patches[id]; ok {
		return p.Entities, nil
	}
	var match []*Patch
	var ents []*Entity
	for _, p := range m.sortedPatches() {
		mt := p.Meta
		nvr := mt.Target.NVR()
		full := nvr + "/" + mt.Name + "-" + mt.Version + "-" + mt.Release
		rpm := mt.RPMName()
		switch id {
		case full, nvr + "/" + mt.Name, rpm, rpm + "-" + mt.Version + "-" + mt.Release:
			match = append(match, p)
			continue
		}
		for _, e := range p.Entities {
			if e.Name() == id {
				ents = append(ents, e)
			}
		}
	}
	if len(ents) > 0 {
		return ents, nil
	}
	switch len(match) {
	case 0:
		for _, b := range m.broken {
			if b.Dir == id {
				return nil, fmt.Errorf("%w: %s is broken: %s", ErrNotFound, id, b.Reason)
			}
		}
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	case 1:
		return match[0].Entities, nil
	}
	var names []string
	for _, p := range match {
		names = append(names, p.Meta.UUID)
	}
	return nil, fmt.Errorf("%w: %q is ambiguous (patches %s)", ErrNotFound, id, strings.Join(names, ", "))
}

// Entities returns the entities the ids name.
func (m *Manager) Entities(ids []string) ([]*Entity, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resolve(ids)
}

// Patches returns the patches the ids name, each once, in order.
func (m *Manager) Patches(ids []string) ([]*Patch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	es, err := m.resolve(ids)
	if err != nil {
		return nil, err
	}
	return patchesOf(es), nil
}

// patchesOf returns the patches of es, each once, in order.
func patchesOf(es []*Entity) []*Patch {
	var out []*Patch
	seen := map[*Patch]bool{}
	for _, e := range es {
		if !seen[e.Patch] {
			seen[e.Patch] = true
			out = append(out, e.Patch)
		}
	}
	return out
}

// Status returns the states of the entities the ids name.
func (m *Manager) Status(ids []string) ([]Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	es, err := m.resolve(ids)
	if err != nil {
		return nil, err
	}
	out := make([]Status, len(es))
	for i, e := range es {
		out[i] = status(e)
	}
	return out, nil
}

// Snapshot returns the entity states (for JSON replies) under the lock.
func (m *Manager) Snapshot(p *Patch) []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, len(p.Entities))
	for i, e := range p.Entities {
		out[i] = status(e)
	}
	return out
}

// Watching reports whether a user patch is active, so the helper must keep running to
// patch new processes.
func (m *Manager) Watching() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.entities {
		// A rebuilt patch has no object to give new processes: nothing to watch for.
		if e.Kind() == patchmeta.KindUser && e.State >= Actived && !e.Patch.Rebuilt {
			return true
		}
	}
	return false
}

// ProcessStatus returns per-process states of the user entities the id names.
func (m *Manager) ProcessStatus(ctx context.Context, id string) (map[*Entity][]ProcessState, []*Entity, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	es, err := m.resolve([]string{id})
	if err != nil {
		return nil, nil, err
	}
	out := map[*Entity][]ProcessState{}
	for _, e := range es {
		d, _ := m.driver(e)
		pr, ok := d.(ProcessReporter)
		if !ok {
			return nil, nil, fmt.Errorf("%w: per-process status of %s patches", ErrNotSupported, e.Kind())
		}
		ps, err := pr.Processes(ctx, e)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", e.Name(), err)
		}
		out[e] = ps
	}
	return out, es, nil
}

// PatchNewProcess patches a process that started running target (a host path) after
// the user entities on it were activated, in activation order.
func (m *Manager) PatchNewProcess(ctx context.Context, pid int, target string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var es []*Entity
	for _, e := range m.entities {
		if e.Kind() == patchmeta.KindUser && e.State >= Actived && m.HostPath(e.Meta.TargetPath) == target {
			es = append(es, e)
		}
	}
	if len(es) == 0 {
		return nil
	}
	sort.Slice(es, func(i, j int) bool { return es[i].activated < es[j].activated })
	d, _ := m.driver(es[0])
	np, ok := d.(NewProcessPatcher)
	if !ok {
		return fmt.Errorf("%w: new processes of %s patches", ErrNotSupported, es[0].Kind())
	}
	return np.PatchNew(ctx, pid, es)
}
