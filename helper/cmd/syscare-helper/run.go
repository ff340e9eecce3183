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

	scbus "github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/helper/server"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/runtime/watch"
)

func run(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("syscare-helper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bus := fs.String("bus", "", "bus to serve on: system, session or an address (default: the activating bus, else the system bus)")
	root := fs.String("root", envOr("SYSCARE_ROOT", "/"), "root prefix of every path (patches, state, rpmdb, targets)")
	idle := fs.Duration("idle-timeout", 30*time.Second, "exit after this long without calls while no user patch is active (0: never)")
	level := fs.String("log-level", "info", "log level (debug, info, warn, error)")
	noWatch := fs.Bool("no-watch", false, "do not patch processes that start after activation")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := logrus.New()
	log.SetOutput(stderr)
	lv, err := logrus.ParseLevel(*level)
	if err != nil {
		return err
	}
	log.SetLevel(lv)
	rootDir, err := filepath.Abs(*root)
	if err != nil {
		return err
	}

	addr := *bus
	if addr == "" {
		addr = os.Getenv("DBUS_STARTER_ADDRESS")
	}
	conn, err := godbus.Connect(scbus.Address(addr))
	if err != nil {
		return fmt.Errorf("connect to bus: %w", err)
	}
	defer conn.Close()

	var w *watch.Watcher
	if !*noWatch {
		w, err = watch.New()
		if err != nil {
			log.WithError(err).Warn("new processes will not be patched")
		} else {
			defer w.Close()
			if r := w.FallbackReason(); r != nil {
				log.WithError(r).WithField("mode", w.Mode()).Warn("eBPF unavailable: new processes are caught by exec notifications, which race with the process")
			}
		}
	}

	var srv *server.Server
	var m *manager.Manager
	user := &manager.UserDriver{
		Engine: manager.NewUpatchEngine(rootDir),
		Host:   func(p string) string { return m.HostPath(p) },
	}
	if w != nil {
		user.Watch = w
	}
	m = manager.New(manager.Config{
		Root: rootDir,
		Log:  log,
		Drivers: map[string]manager.Driver{
			patchmeta.KindUser:   user,
			patchmeta.KindKernel: manager.Unsupported(patchmeta.KindKernel),
		},
		OnChange: func(e *manager.Entity, old, new manager.State) {
			if srv != nil {
				srv.Emit(e, old, new)
			}
		},
	})
	srv = server.New(server.Config{Conn: conn, Manager: m, Log: log, Resolve: repoResolver(rootDir)})

	if w != nil {
		go patchNew(ctx, w, m, log)
	}
	if err := m.Start(ctx); err != nil {
		log.WithError(err).Error("restore at start incomplete")
	}
	if err := server.WatchDir(ctx, filepath.Join(rootDir, manager.PatchesDir), 200*time.Millisecond, m.Rescan); err != nil {
		log.WithError(err).Warn("patch directories are not watched; use rescan")
	}
	if err := srv.Export(); err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"root": rootDir, "bus": scbus.Address(addr)}).Info("serving")

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

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
