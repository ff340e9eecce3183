// Package state stores syscare-helper's patch states in /var/lib/syscare as versioned JSON
// files written atomically (temp file, fsync, rename, fsync of the directory).
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// SchemaVersion is the layout version of the files this package writes.
const SchemaVersion = 1

// File names under the state directory.
const (
	// CurrentFile is rewritten at every transition.
	CurrentFile = "state.json"
	// SavedFile is written by `syscare save` and read by `syscare restore`.
	SavedFile = "saved.json"
)

// ErrCorrupt is wrapped when a state file cannot be understood.
var ErrCorrupt = errors.New("corrupt state file")

// Entry is the state of one entity.
type Entry struct {
	UUID  string `json:"uuid"`
	Patch string `json:"patch"`
	State string `json:"state"`
	// Seq orders entries by when they reached State; restore replays in this order.
	Seq uint64 `json:"seq"`
	// Activated orders active entries by when they were switched on (stacking order).
	Activated uint64 `json:"activated,omitempty"`
	// Name and Target (the entity's display name and target path) let a restarted
	// helper show and remove a patch that is live in processes while its directory is
	// missing.
	Name   string `json:"name,omitempty"`
	Target string `json:"target,omitempty"`
}

// Snapshot is the content of a state file.
type Snapshot struct {
	Schema int `json:"schema"`
	// BootID is /proc/sys/kernel/random/boot_id when written: it tells a helper restart
	// from a reboot.
	BootID  string  `json:"boot_id,omitempty"`
	Seq     uint64  `json:"seq"`
	Entries []Entry `json:"entries"`
}

// Sorted returns the entries in the order their states were reached.
func (s *Snapshot) Sorted() []Entry {
	es := append([]Entry(nil), s.Entries...)
	sort.SliceStable(es, func(i, j int) bool { return es[i].Seq < es[j].Seq })
	return es
}

// Store reads and writes the state files of one directory.
type Store struct{ Dir string }

// Load reads a state file; a missing file is an empty snapshot.
func (s Store) Load(name string) (*Snapshot, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return &Snapshot{Schema: SchemaVersion}, nil
	}
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var snap Snapshot
	if err := dec.Decode(&snap); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", filepath.Join(s.Dir, name), ErrCorrupt, err)
	}
	if snap.Schema != SchemaVersion {
		return nil, fmt.Errorf("%s: %w: schema %d, want %d", filepath.Join(s.Dir, name), ErrCorrupt, snap.Schema, SchemaVersion)
	}
	return &snap, nil
}

// Save writes a state file atomically.
func (s Store) Save(name string, snap *Snapshot) error {
	snap.Schema = SchemaVersion
	b, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(s.Dir, name), append(b, '\n'), 0o600)
}

// CleanTemp removes the temporary files that WriteFileAtomic leaves behind when the
// process dies between creating and renaming them, and returns their paths. Call it
// only while no other writer uses the directory (the helper at start).
func (s Store) CleanTemp() ([]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, de := range ents {
		// Remove never follows a symlink: one planted here only loses its name.
		if !isTemp(de.Name()) || de.IsDir() {
			continue
		}
		p := filepath.Join(s.Dir, de.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}

// isTemp reports whether name is a temporary file of WriteFileAtomic (".NAME.tmp*").
func isTemp(name string) bool {
	if !strings.HasPrefix(name, ".") {
		return false
	}
	i := strings.LastIndex(name, ".tmp")
	return i > 1
}

// WriteFileAtomic replaces path with data so that a crash leaves either the old or the
// new content, never a mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	// The rename is durable only once the directory entry is.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// BootID returns the kernel's boot id, or "" where it cannot be read.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}

// Parse converts a stored state string with parse, wrapping its error as ErrCorrupt.
func Parse[S any](s string, parse func(string) (S, error)) (S, error) {
	v, err := parse(s)
	if err != nil {
		return v, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return v, nil
}
