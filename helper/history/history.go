// Package history keeps the results of the last upgrade runs (the timer's, dnf
// hotpatch's, syscare upgrade's) in /var/lib/syscare/history.json for `syscare history`.
package history

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/state"
)

// FileName is the history file in the state directory.
const FileName = "history.json"

// DefaultKeep is how many runs are kept.
const DefaultKeep = 50

var addMu sync.Mutex

// Store is the history file of one state directory; the helper is its only writer.
type Store struct {
	Dir  string
	Keep int
}

type file struct {
	Schema int                 `json:"schema"`
	Runs   []syscarebus.Record `json:"runs"`
}

// Load returns the runs, oldest first; a missing file is an empty history.
func (s Store) Load() ([]syscarebus.Record, error) {
	data, err := os.ReadFile(filepath.Join(s.Dir, FileName))
	if errors.Is(err, os.ErrNotExist) {
		return []syscarebus.Record{}, nil
	}
	if err != nil {
		return nil, err
	}
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", state.ErrCorrupt, FileName, err)
	}
	if f.Runs == nil {
		f.Runs = []syscarebus.Record{}
	}
	return f.Runs, nil
}

// Add appends a run and drops the oldest beyond Keep. The directory must be root's and
// not writable by others: the file is written there as root, so another user must not
// be able to plant anything on the way. A corrupt history is started afresh (it is a
// log, not state), with the reason kept as the first record.
func (s Store) Add(r syscarebus.Record) error {
	// Two runs may end at once (the manager serializes transactions, not their
	// records): the read-modify-write of the file is one at a time.
	addMu.Lock()
	defer addMu.Unlock()
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	fi, err := os.Lstat(s.Dir)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || st == nil || st.Uid != uint32(os.Geteuid()) || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("history: %s is not a directory of uid %d closed to others", s.Dir, os.Geteuid())
	}
	runs, err := s.Load()
	if err != nil {
		runs = []syscarebus.Record{{Time: r.Time, Source: "history", Result: syscarebus.RunFailed, Summary: "history was unreadable and started afresh: " + err.Error()}}
	}
	runs = append(runs, r)
	keep := s.Keep
	if keep <= 0 {
		keep = DefaultKeep
	}
	if len(runs) > keep {
		runs = runs[len(runs)-keep:]
	}
	data, err := json.MarshalIndent(file{Schema: 1, Runs: runs}, "", "  ")
	if err != nil {
		return err
	}
	return state.WriteFileAtomic(filepath.Join(s.Dir, FileName), append(data, '\n'), 0o644)
}

// Now is the time records carry (UTC, to the second).
func Now() time.Time { return time.Now().UTC().Truncate(time.Second) }
