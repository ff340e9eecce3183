package syscarebus

import (
	godbus "github.com/godbus/dbus/v5"
)

// Progress is one Progress signal: Done of Total processes are over while the entity
// Patch goes into (Operation "activate") or out of ("deactivate") its target's processes.
type Progress struct {
	Operation string
	Patch     string
	Done      uint32
	Total     uint32
}

// WatchProgress subscribes to the helper's Progress signals and returns them on a
// channel until stop is called. It returns once the bus has the match rule, so a call
// made after it misses none of its signals.
func (c *Client) WatchProgress() (events <-chan Progress, stop func(), err error) {
	opts := []godbus.MatchOption{godbus.WithMatchSender(BusName), godbus.WithMatchObjectPath(ObjectPath),
		godbus.WithMatchInterface(Interface), godbus.WithMatchMember(SignalProgress)}
	if err := c.conn.AddMatchSignal(opts...); err != nil {
		return nil, nil, err
	}
	raw := make(chan *godbus.Signal, 64)
	c.conn.Signal(raw)
	out := make(chan Progress, 64)
	quit := make(chan struct{})
	go func() {
		defer close(out)
		for {
			select {
			case <-quit:
				return
			case s := <-raw:
				var p Progress
				if s.Name != Interface+"."+SignalProgress || godbus.Store(s.Body, &p.Operation, &p.Patch, &p.Done, &p.Total) != nil {
					continue
				}
				select {
				case out <- p:
				case <-quit:
					return
				}
			}
		}
	}()
	return out, func() {
		c.conn.RemoveSignal(raw)
		_ = c.conn.RemoveMatchSignal(opts...)
		close(quit)
	}, nil
}
