// Package server exports syscare-helper's patch manager on D-Bus as the contract in
// dbus/ (package syscarebus) describes: method dispatch, caller authorization, the
// manager's records turned into contract messages, signals, and the activity clock the
// idle exit reads. Errors reach the bus under the name of the contract's error kind
// they wrap (syscarebus.BusError); the server adds no mapping of its own.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	godbus "github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/history"
	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/helper/policy"
)

// Resolver answers the Resolve method (repository resolution, helper/repo).
type Resolver func(ctx context.Context, opts map[string]godbus.Variant) (string, error)

// Config configures a Server.
type Config struct {
	Conn    *godbus.Conn
	Manager *manager.Manager
	Log     logrus.FieldLogger
	// Auth decides who may change the system; a BusAuthorizer on Conn by default.
	Auth Authorizer
	// Resolve serves Resolve; nil replies NotSupported.
	Resolve Resolver
	// Policy loads /etc/syscare/upgrade.conf for Upgrade's option policy; nil refuses it.
	Policy func() (*policy.Policy, error)
	// History keeps the upgrade runs; nil keeps none.
	History *history.Store
	// CallTimeout bounds one method call (default 10 minutes: patching many processes
	// can take a while).
	CallTimeout time.Duration
}

// Server is the exported object.
type Server struct {
	cfg      Config
	obj      *Object
	last     atomic.Int64
	inflight atomic.Int32
	progress throttle
}

// New returns a server; Export puts it on the bus.
func New(cfg Config) *Server {
	if cfg.Auth == nil {
		cfg.Auth = &BusAuthorizer{Conn: cfg.Conn}
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = 10 * time.Minute
	}
	s := &Server{cfg: cfg}
	s.progress.now = time.Now
	s.obj = &Object{s: s}
	s.touch()
	return s
}

// Export exports the object and its introspection data and claims the bus name; it
// fails when another process owns the name.
func (s *Server) Export() error {
	c := s.cfg.Conn
	if err := c.Export(s.obj, syscarebus.ObjectPath, syscarebus.Interface); err != nil {
		return fmt.Errorf("export %s: %w", syscarebus.Interface, err)
	}
	if err := c.Export(introspect.Introspectable(syscarebus.IntrospectXML), syscarebus.ObjectPath, "org.freedesktop.DBus.Introspectable"); err != nil {
		return fmt.Errorf("export introspection: %w", err)
	}
	reply, err := c.RequestName(syscarebus.BusName, godbus.NameFlagDoNotQueue)
	if err != nil {
		return fmt.Errorf("request name %s: %w", syscarebus.BusName, err)
	}
	if reply != godbus.RequestNameReplyPrimaryOwner {
		return fmt.Errorf("request name %s: already owned by another process", syscarebus.BusName)
	}
	return nil
}

// Emit sends StateChanged; it fits manager.Config.OnChange.
func (s *Server) Emit(e *manager.Entity, old, new manager.State) {
	if s.cfg.Conn == nil {
		return
	}
	if err := s.cfg.Conn.Emit(syscarebus.ObjectPath, syscarebus.Interface+"."+syscarebus.SignalStateChanged,
		e.UUID(), e.Name(), old.String(), new.String()); err != nil {
		s.cfg.Log.WithError(err).Warn("emit StateChanged")
	}
}

func (s *Server) touch() { s.last.Store(time.Now().UnixNano()) }

// Idle returns how long no method call has run (zero while one runs).
func (s *Server) Idle() time.Duration {
	if s.inflight.Load() > 0 {
		return 0
	}
	return time.Since(time.Unix(0, s.last.Load()))
}

// begin marks a call of method running and returns its context and the function ending
// it. Each call is logged at debug level: the log shows which calls a client made.
func (s *Server) begin(method string) (context.Context, func()) {
	s.cfg.Log.WithField("method", method).Debug("call")
	s.inflight.Add(1)
	s.touch()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CallTimeout)
	return ctx, func() {
		cancel()
		s.touch()
		s.inflight.Add(-1)
	}
}

// authorize checks that sender may change the system.
func (s *Server) authorize(ctx context.Context, sender godbus.Sender, method string) *godbus.Error {
	if err := s.cfg.Auth.Authorize(ctx, string(sender)); err != nil {
		s.cfg.Log.WithFields(logrus.Fields{"sender": string(sender), "method": method}).WithError(err).Warn("caller denied")
		return syscarebus.BusError(err)
	}
	return nil
}

func states(ss []manager.Status) []syscarebus.EntityState {
	out := make([]syscarebus.EntityState, len(ss))
	for i, st := range ss {
		out[i] = syscarebus.EntityState{UUID: st.UUID, Name: st.Name, Status: st.State.String()}
	}
	return out
}

// Object is the D-Bus object: its exported methods are the contract's methods (a test
// holds them against dbus/org.openeuler.SysCare1.xml).
type Object struct{ s *Server }

// List returns every entity and broken patch directory.
func (o *Object) List() ([]syscarebus.ListEntry, *godbus.Error) {
	_, end := o.s.begin("List")
	defer end()
	es, broken := o.s.cfg.Manager.List()
	out := make([]syscarebus.ListEntry, 0, len(es)+len(broken))
	for _, e := range es {
		out = append(out, syscarebus.ListEntry{UUID: e.UUID, Name: e.Name, Status: e.State.String(), Patch: e.PatchUUID, Problem: e.Problem})
	}
	for _, b := range broken {
		out = append(out, syscarebus.ListEntry{UUID: b.Dir, Name: b.Dir, Status: syscarebus.StatusBroken, Problem: b.Reason})
	}
	return out, nil
}

// Status returns entity states.
func (o *Object) Status(ids []string) ([]syscarebus.EntityState, *godbus.Error) {
	_, end := o.s.begin("Status")
	defer end()
	ss, err := o.s.cfg.Manager.Status(ids)
	if err != nil {
		return nil, syscarebus.BusError(err)
	}
	return states(ss), nil
}

// Info returns the patches as JSON.
func (o *Object) Info(ids []string) (string, *godbus.Error) {
	_, end := o.s.begin("Info")
	defer end()
	ps, err := o.s.cfg.Manager.Patches(ids)
	if err != nil {
		return "", syscarebus.BusError(err)
	}
	out := []syscarebus.PatchInfo{}
	for _, p := range ps {
		st := states(o.s.cfg.Manager.Snapshot(p))
		var sums map[string]string
		if !p.Gone {
			sums = reportSummaries(p.Dir, p.Meta.Report)
		}
		out = append(out, patchInfo(p, st, sums))
	}
	b, _ := json.Marshal(out)
	return string(b), nil
}

// maxReport bounds what Info reads of a patch report.
const maxReport = 4 << 20

// reportSummaries reads the summary line of each target ELF from the patch report
// (rpmbuild/builder.ReportFile: a JSON array of reports, each with "target" and
// "summary"). A missing or malformed report gives none: info shows the rest.
func reportSummaries(dir, file string) map[string]string {
	if file == "" || file != filepath.Base(file) || file == "." || file == ".." {
		return nil
	}
	f, err := os.Open(filepath.Join(dir, file))
	if err != nil {
		return nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxReport))
	if err != nil {
		return nil
	}
	var reports []syscarebus.ReportSummary
	if json.Unmarshal(data, &reports) != nil {
		return nil
	}
	out := map[string]string{}
	for _, r := range reports {
		out[r.Target] = r.Summary
	}
	return out
}

// Target returns the target packages as JSON.
func (o *Object) Target(ids []string) (string, *godbus.Error) {
	_, end := o.s.begin("Target")
	defer end()
	ps, err := o.s.cfg.Manager.Patches(ids)
	if err != nil {
		return "", syscarebus.BusError(err)
	}
	out := []syscarebus.TargetInfo{}
	for _, p := range ps {
		ti := syscarebus.TargetInfo{UUID: p.Meta.UUID, Patch: p.Meta.Name + "-" + p.Meta.Version + "-" + p.Meta.Release,
			Target: contractPackage(p.Meta.Target)}
		for _, e := range p.Meta.Entities {
			ti.Files = append(ti.Files, e.TargetPath)
		}
		out = append(out, ti)
	}
	b, _ := json.Marshal(out)
	return string(b), nil
}

func (o *Object) transition(sender godbus.Sender, method string, op manager.Op, ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	ctx, end := o.s.begin(method)
	defer end()
	if err := o.s.authorize(ctx, sender, method); err != nil {
		return nil, err
	}
	log := o.s.cfg.Log.WithFields(logrus.Fields{"method": method, "ids": ids, "force": force})
	ss, err := o.s.cfg.Manager.Transition(ctx, op, ids, force)
	if err != nil {
		log.WithError(err).Warn("transaction failed")
		return nil, syscarebus.BusError(err)
	}
	log.Info("transaction done")
	return states(ss), nil
}

// Apply takes entities to ACTIVED.
func (o *Object) Apply(sender godbus.Sender, ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	return o.transition(sender, "Apply", manager.OpApply, ids, force)
}

// Active takes DEACTIVED entities to ACTIVED.
func (o *Object) Active(sender godbus.Sender, ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	return o.transition(sender, "Active", manager.OpActive, ids, force)
}

// Deactive takes entities to DEACTIVED.
func (o *Object) Deactive(sender godbus.Sender, ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	return o.transition(sender, "Deactive", manager.OpDeactive, ids, force)
}

// Remove takes entities to NOT-APPLIED.
func (o *Object) Remove(sender godbus.Sender, ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	return o.transition(sender, "Remove", manager.OpRemove, ids, force)
}

// Accept takes ACTIVED entities to ACCEPTED.
func (o *Object) Accept(sender godbus.Sender, ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	return o.transition(sender, "Accept", manager.OpAccept, ids, force)
}

// Upgrade runs the upgrade policy (manager.Upgrade) on the patches the ids name as one
// transaction and reports what it did to each entity; with the option policy, under
// /etc/syscare/upgrade.conf. Every run is logged in one line and kept in the history.
func (o *Object) Upgrade(sender godbus.Sender, ids []string, opts map[string]godbus.Variant) ([]syscarebus.UpgradeEntry, *godbus.Error) {
	ctx, end := o.s.begin("Upgrade")
	defer end()
	if err := o.s.authorize(ctx, sender, "Upgrade"); err != nil {
		return nil, err
	}
	rec := syscarebus.Record{Time: history.Now(), IDs: ids}
	uo, pol, err := readUpgradeOptions(opts)
	if err != nil {
		return nil, syscarebus.BusError(err)
	}
	if pol {
		rec.Source = "policy"
		uo, err = o.s.policyRun(ids, uo.Force)
	} else {
		uid, _ := o.s.callerUID(ctx, sender)
		rec.Source = fmt.Sprintf("uid %d", uid)
		err = o.s.runChecksAs(ctx, sender, &uo)
	}
	if uo.Health.Soak > 0 {
		// A soak may outlast the usual bound of a call: the bound starts after it.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), o.s.cfg.CallTimeout+uo.Health.Soak)
		defer cancel()
	}
	var rs []manager.UpgradeResult
	switch {
	case err != nil:
	case len(ids) == 0 && pol:
		rec.Result, rec.Summary = syscarebus.RunNothing, "no hot patch to install"
	default:
		rs, err = o.s.cfg.Manager.Upgrade(ctx, ids, uo)
	}
	log := o.s.cfg.Log.WithFields(logrus.Fields{"method": "Upgrade", "ids": ids, "accept": uo.Accept, "force": uo.Force, "source": rec.Source})
	for _, r := range rs {
		log.WithFields(logrus.Fields{"patch": r.Name, "action": r.Action, "from": r.From.String(), "to": r.State.String()}).Info("upgrade")
	}
	rec.Entries = upgradeEntries(rs)
	o.s.record(log, rec, err)
	if err != nil {
		return nil, syscarebus.BusError(err)
	}
	return rec.Entries, nil
}

// policyRun loads the policy and checks its window, then turns its gate for the
// patches the ids name into Upgrade's options.
func (s *Server) policyRun(ids []string, force bool) (manager.UpgradeOptions, error) {
	if s.cfg.Policy == nil {
		return manager.UpgradeOptions{}, fmt.Errorf("%w: upgrade policies are not built into this helper", syscarebus.ErrNotSupported)
	}
	p, err := s.cfg.Policy()
	if err != nil {
		return manager.UpgradeOptions{}, err
	}
	if err := p.CheckWindow(time.Now()); err != nil {
		return manager.UpgradeOptions{}, fmt.Errorf("%w: nothing done", err)
	}
	// The patch RPMs were usually installed a moment ago: the gate is chosen by their
	// target packages, so read the directories now rather than wait for the watch.
	s.cfg.Manager.Rescan()
	var names []string
	if ps, err := s.cfg.Manager.Patches(ids); err == nil {
		for _, pt := range ps {
			names = append(names, pt.Meta.Target.Name, pt.Meta.Name)
		}
	}
	return policyOptions(p, names, force)
}

// record logs the one-line summary of an upgrade run and keeps it in the history.
func (s *Server) record(log logrus.FieldLogger, rec syscarebus.Record, err error) {
	switch {
	case errors.Is(err, syscarebus.ErrOutsideWindow):
		rec.Result, rec.Summary = syscarebus.RunSkipped, err.Error()
	case err != nil:
		rec.Result, rec.Error = syscarebus.RunFailed, err.Error()
		rec.Summary = "failed, nothing changed: " + err.Error()
	case rec.Result == "":
		rec.Result, rec.Summary = syscarebus.RunOK, summarize(rec.Entries)
	}
	l := log.WithField("result", rec.Result)
	if err != nil && rec.Result == syscarebus.RunFailed {
		l.Warn("upgrade run: " + rec.Summary)
	} else {
		l.Info("upgrade run: " + rec.Summary)
	}
	if s.cfg.History != nil {
		if herr := s.cfg.History.Add(rec); herr != nil {
			log.WithError(herr).Error("history not written")
		}
	}
}

// summarize counts what an upgrade did: "2 applied, 1 superseded (ACCEPTED; healthy: ...)".
func summarize(es []syscarebus.UpgradeEntry) string {
	counts := map[string]int{}
	var order []string
	detail, reached := "", ""
	for _, e := range es {
		a := strings.ToLower(e.Action)
		if counts[a] == 0 {
			order = append(order, a)
		}
		counts[a]++
		if e.Action != syscarebus.UpgradeSuperseded && e.Action != syscarebus.UpgradeUnchanged {
			reached = e.Status
			if strings.HasPrefix(e.Detail, "healthy") {
				detail = e.Detail
			}
		}
	}
	if len(es) == 0 {
		return "nothing changed"
	}
	var parts []string
	for _, a := range order {
		parts = append(parts, fmt.Sprintf("%d %s", counts[a], a))
	}
	out := strings.Join(parts, ", ")
	if reached != "" {
		out += " (" + reached
		if detail != "" {
			out += "; " + detail
		}
		out += ")"
	}
	return out
}

// History returns the last upgrade runs as JSON, oldest first.
func (o *Object) History() (string, *godbus.Error) {
	_, end := o.s.begin("History")
	defer end()
	if o.s.cfg.History == nil {
		return "[]", nil
	}
	runs, err := o.s.cfg.History.Load()
	if err != nil {
		return "", syscarebus.BusError(err)
	}
	b, _ := json.Marshal(runs)
	return string(b), nil
}

// Check verifies entities without changing them.
func (o *Object) Check(ids []string, force bool) ([]syscarebus.EntityState, *godbus.Error) {
	ctx, end := o.s.begin("Check")
	defer end()
	ss, err := o.s.cfg.Manager.Check(ctx, ids)
	if err != nil {
		return nil, syscarebus.BusError(err)
	}
	return states(ss), nil
}

// Save records the states.
func (o *Object) Save(sender godbus.Sender) *godbus.Error {
	ctx, end := o.s.begin("Save")
	defer end()
	if err := o.s.authorize(ctx, sender, "Save"); err != nil {
		return err
	}
	return syscarebus.BusError(o.s.cfg.Manager.Save())
}

// Restore replays the saved states.
func (o *Object) Restore(sender godbus.Sender, acceptedOnly bool) ([]syscarebus.EntityState, *godbus.Error) {
	ctx, end := o.s.begin("Restore")
	defer end()
	if err := o.s.authorize(ctx, sender, "Restore"); err != nil {
		return nil, err
	}
	ss, err := o.s.cfg.Manager.Restore(ctx, acceptedOnly)
	if err != nil {
		return nil, syscarebus.BusError(err)
	}
	return states(ss), nil
}

// Rescan re-reads the patch directories.
func (o *Object) Rescan(sender godbus.Sender) *godbus.Error {
	ctx, end := o.s.begin("Rescan")
	defer end()
	if err := o.s.authorize(ctx, sender, "Rescan"); err != nil {
		return err
	}
	o.s.cfg.Manager.Rescan()
	return nil
}

// ProcessStatus returns per-process states of a user patch.
func (o *Object) ProcessStatus(id string) ([]syscarebus.ProcessState, *godbus.Error) {
	ctx, end := o.s.begin("ProcessStatus")
	defer end()
	byEnt, order, err := o.s.cfg.Manager.ProcessStatus(ctx, id)
	if err != nil {
		return nil, syscarebus.BusError(err)
	}
	out := []syscarebus.ProcessState{}
	for _, e := range order {
		for _, p := range byEnt[e] {
			out = append(out, syscarebus.ProcessState{Pid: int32(p.Pid), UUID: e.UUID(), Status: p.State.String(), Detail: p.Detail,
				MountNS: p.MountNS, Container: p.Container})
		}
	}
	return out, nil
}

// Resolve asks the repository resolver which patch RPMs apply to this host.
func (o *Object) Resolve(opts map[string]godbus.Variant) (string, *godbus.Error) {
	ctx, end := o.s.begin("Resolve")
	defer end()
	if o.s.cfg.Resolve == nil {
		return "", syscarebus.BusError(fmt.Errorf("%w: repository resolution is not built into this helper yet", syscarebus.ErrNotSupported))
	}
	js, err := o.s.cfg.Resolve(ctx, opts)
	if err != nil {
		return "", syscarebus.BusError(err)
	}
	return js, nil
}
