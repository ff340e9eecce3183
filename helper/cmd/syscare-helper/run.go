package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	godbus "github.com/godbus/dbus/v5"
	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/dirwatch"
	"github.com/syscare/syscare/helper/history"
	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/helper/policy"
	"github.com/syscare/syscare/helper/server"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/runtime/watch"
)

const usage = `Usage: syscare-helper [--bus system|session|ADDRESS] [--root DIR] [--idle-timeout D]
                      [--log-level LEVEL] [--no-watch]

SysCare's D-Bus service. It owns org.openeuler.SysCare1 on the bus (the contract is
dbus/org.openeuler.SysCare1.xml) and manages the hot patches installed under
ROOT/usr/lib/syscare/patches: it verifies and applies them to every running process
that maps their target (and to processes started later), loads kernel livepatch
modules, keeps their state in ROOT/var/lib/syscare, and restores accepted patches
when it starts. Normally the bus starts it on demand (activation) and it exits after
the idle timeout while no user patch is active. Clients: the syscare command and
dnf hotpatch. Logs go to stderr as text, or, when systemd connects stderr to the
journal (JOURNAL_STREAM), to the journal with priorities and the fields PATCH,
PATCH_UUID, TARGET, PID and OPERATION (journalctl -u syscare-helper PATCH=NAME).

Options:
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("syscare-helper", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help prints below
	fs.Usage = func() {}
	bus := fs.String("bus", "", "bus to serve on: system, session or an address (default: the activating bus, else the system bus)")
	root := fs.String("root", envOr("SYSCARE_ROOT", "/"), "root prefix of every path (patches, state, rpmdb, targets)")
	idle := fs.Duration("idle-timeout", 30*time.Second, "exit after this long without calls while no user patch is active (0: never)")
	level := fs.String("log-level", "info", "log level (debug, info, warn, error)")
	noWatch := fs.Bool("no-watch", false, "do not patch processes that start after activation")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil
		}
		return fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	log := logrus.New()
	log.SetOutput(stderr)
	lv, err := logrus.ParseLevel(*level)
	if err != nil {
		return err
	}
	log.SetLevel(lv)
	if j := useJournal(log); j != nil {
		defer j.Close()
	}
	rootDir, err := filepath.Abs(*root)
	if err != nil {
		return err
	}

	addr := *bus
	if addr == "" {
		addr = os.Getenv("DBUS_STARTER_ADDRESS")
	}
	conn, err := godbus.Connect(syscarebus.Address(addr))
	if err != nil {
		return fmt.Errorf("connect to bus: %w", err)
	}
	defer conn.Close()

	// The watcher (eBPF programs) costs up to 0.2 s to set up: it is created when the
	// first user patch goes active, so that activation for a read stays fast.
	lw := &lazyWatcher{ctx: ctx, log: log}
	defer lw.Close()
	var srv *server.Server
	var m *manager.Manager
	user := &manager.UserDriver{
		Engine: manager.NewUpatchEngine(rootDir),
		Host:   func(p string) string { return m.HostPath(p) },
	}
	if !*noWatch {
		user.Watch = lw
	}
	m = manager.New(manager.Config{
		Root: rootDir,
		Log:  log,
		Drivers: map[string]manager.Driver{
			patchmeta.KindUser:   user,
			patchmeta.KindKernel: manager.NewKernelDriver(rootDir),
		},
		OnChange: func(e *manager.Entity, old, new manager.State) {
			if srv != nil {
				srv.Emit(e, old, new)
			}
		},
	})
	srv = server.New(server.Config{Conn: conn, Manager: m, Log: log, Resolve: repoResolver(rootDir),
		Policy:  func() (*policy.Policy, error) { return policy.Load(rootDir) },
		History: &history.Store{Dir: filepath.Join(rootDir, manager.StateDir)}})
	user.Progress = srv.EmitProgress

	lw.m = m
	if err := m.Start(ctx); err != nil {
		log.WithError(err).Error("restore at start incomplete")
	}
	if err := dirwatch.Watch(ctx, filepath.Join(rootDir, manager.PatchesDir), 200*time.Millisecond, m.Rescan); err != nil {
		log.WithError(err).Warn("patch directories are not watched; use rescan")
	}
	if err := srv.Export(); err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"root": rootDir, "bus": syscarebus.Address(addr)}).Info("serving")

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping")
			return nil
		case <-tick.C:
			if !conn.Connected() {
				return errors.New("bus connection lost")
			}
			if *idle > 0 && srv.Idle() > *idle && !m.Watching() {
				log.Info("idle, exiting")
				return nil
			}
		}
	}
}

// patchNew patches every new process the watcher stopped, then lets it run.
func patchNew(ctx context.Context, w *watch.Watcher, m *manager.Manager, log logrus.FieldLogger) {
	for ev := range w.Events() {
		l := log.WithFields(logrus.Fields{"pid": ev.Pid, "target": ev.Path})
		if err := m.PatchNewProcess(ctx, ev.Pid, ev.Path); err != nil {
			l.WithError(err).Error("patch new process")
		} else {
			l.Debug("new process patched")
		}
		if err := w.Resume(ev.Pid); err != nil {
			l.WithError(err).Warn("resume new process")
		}
	}
}

// lazyWatcher creates the runtime/watch watcher on first use and feeds its events to the
// manager.
type lazyWatcher struct {
	ctx context.Context
	log logrus.FieldLogger
	m   *manager.Manager
	w   *watch.Watcher
	err error
}

func (l *lazyWatcher) get() (*watch.Watcher, error) {
	if l.w != nil || l.err != nil {
		return l.w, l.err
	}
	l.w, l.err = watch.New()
	if l.err != nil {
		l.log.WithError(l.err).Warn("new processes will not be patched")
		return nil, l.err
	}
	if r := l.w.FallbackReason(); r != nil {
		l.log.WithError(r).WithField("mode", l.w.Mode()).Warn("eBPF unavailable: new processes are caught by exec notifications, which race with the process")
	} else {
		l.log.WithField("mode", l.w.Mode()).Info("watching for new processes")
	}
	go patchNew(l.ctx, l.w, l.m, l.log)
	return l.w, nil
}

// Add watches path (manager.Watcher). A failure is logged, not returned: the patch still
// goes into every running process, only processes started later miss it, and the log
// says so.
func (l *lazyWatcher) Add(path string) error {
	w, err := l.get()
	if err == nil {
		// Copies too: a container runs its own copy of the target (same build-id).
		err = w.AddWithCopies(path)
	}
	if err != nil {
		l.log.WithError(err).WithField("target", path).Error("new processes of this target will not be patched")
	}
	return nil
}

// Remove stops watching path.
func (l *lazyWatcher) Remove(path string) error {
	if l.w == nil {
		return nil
	}
	return l.w.Remove(path)
}

// Close releases the watcher; stopped processes are resumed by watch.Close.
func (l *lazyWatcher) Close() {
	if l.w != nil {
		l.w.Close()
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
