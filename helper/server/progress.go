package server

import (
	"sync"
	"time"

	"github.com/syscare/syscare/dbus"
)

// progressEvery is the shortest time between two Progress signals of one batch: a
// batch over thousands of processes would otherwise flood the bus with a signal per
// process, more than any client can show.
const progressEvery = 100 * time.Millisecond

// throttle decides which progress reports become signals: the first of a batch, then
// one per progressEvery, and always the last (done = total), so a client's count ends
// right.
type throttle struct {
	mu   sync.Mutex
	now  func() time.Time
	last time.Time
	key  string
}

func (t *throttle) pass(key string, done, total int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if done < total && key == t.key && now.Sub(t.last) < progressEvery {
		return false
	}
	t.key, t.last = key, now
	if done == total {
		t.key = "" // the next batch of the same entity starts afresh
	}
	return true
}

// EmitProgress sends Progress for op on the entity, rate-limited; it fits
// manager.UserDriver.Progress.
func (s *Server) EmitProgress(op, entity string, done, total int) {
	if s.cfg.Conn == nil || !s.progress.pass(op+"\x00"+entity, done, total) {
		return
	}
	if err := s.cfg.Conn.Emit(syscarebus.ObjectPath, syscarebus.Interface+"."+syscarebus.SignalProgress,
		op, entity, uint32(done), uint32(total)); err != nil {
		s.cfg.Log.WithError(err).Warn("emit Progress")
	}
}
