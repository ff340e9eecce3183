package syscarebus

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	godbus "github.com/godbus/dbus/v5"
)

// Client calls syscare-helper over D-Bus.
type Client struct {
	conn *godbus.Conn
	obj  godbus.BusObject
}

// Address returns the bus address for a --bus value: "system", "session", or an address.
// An empty value means DBUS_SYSTEM_BUS_ADDRESS, else the system bus.
func Address(bus string) string {
	switch bus {
	case "", "system":
		if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
			return a
		}
		return "unix:path=/run/dbus/system_bus_socket"
	case "session":
		return os.Getenv("DBUS_SESSION_BUS_ADDRESS")
	}
	return bus
}

// Connect opens a private connection to the bus named as in Address.
func Connect(bus string) (*Client, error) {
	addr := Address(bus)
	if addr == "" {
		return nil, fmt.Errorf("connect to %s bus: no address", bus)
	}
	conn, err := godbus.Connect(addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w (is the D-Bus system bus running? syscare reaches syscare-helper through it)", addr, err)
	}
	return &Client{conn: conn, obj: conn.Object(BusName, ObjectPath)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying connection (for signals).
func (c *Client) Conn() *godbus.Conn { return c.conn }

func (c *Client) call(ctx context.Context, method string, out []any, args ...any) error {
	call := c.obj.CallWithContext(ctx, Interface+"."+method, 0, args...)
	if call.Err != nil {
		return call.Err
	}
	if len(out) == 0 {
		return nil
	}
	if err := call.Store(out...); err != nil {
		return fmt.Errorf("%s reply: %w", method, err)
	}
	return nil
}

// List returns every installed entity and broken patch directory.
func (c *Client) List(ctx context.Context) ([]ListEntry, error) {
	var r []ListEntry
	return r, c.call(ctx, "List", []any{&r})
}

// Status returns the states of the entities the ids name.
func (c *Client) Status(ctx context.Context, ids []string) ([]EntityState, error) {
	var r []EntityState
	return r, c.call(ctx, "Status", []any{&r}, ids)
}

// Info returns the JSON description of the patches the ids name.
func (c *Client) Info(ctx context.Context, ids []string) (string, error) {
	var r string
	return r, c.call(ctx, "Info", []any{&r}, ids)
}

// Target returns the JSON description of the target packages of the patches the ids name.
func (c *Client) Target(ctx context.Context, ids []string) (string, error) {
	var r string
	return r, c.call(ctx, "Target", []any{&r}, ids)
}

// Transition calls one of Apply, Active, Deactive, Remove, Accept, Check.
func (c *Client) Transition(ctx context.Context, method string, ids []string, force bool) ([]EntityState, error) {
	var r []EntityState
	return r, c.call(ctx, method, []any{&r}, ids, force)
}

// Upgrade runs the upgrade policy on the patches the ids name as one transaction.
func (c *Client) Upgrade(ctx context.Context, ids []string, accept, force bool) ([]UpgradeEntry, error) {
	return c.UpgradeWith(ctx, ids, UpgradeRequest{Accept: accept, Force: force})
}

// UpgradeRequest is Upgrade's options as Go values.
type UpgradeRequest struct {
	Accept, Force bool
	// NoSupersede leaves the other patches of the targets alone.
	NoSupersede bool
	// Policy runs under /etc/syscare/upgrade.conf (Accept and the gate must be unset).
	Policy bool
	// Health checks (command lines) gate the upgrade over Soak, run every Interval,
	// each killed at CheckTimeout; zero durations are left to the helper's defaults.
	Health                       []string
	TargetHealth                 map[string][]string
	Soak, Interval, CheckTimeout time.Duration
}

// Options returns the a{sv} the request is sent as.
func (r UpgradeRequest) Options() map[string]godbus.Variant {
	opts := map[string]godbus.Variant{UpgradeOptAccept: godbus.MakeVariant(r.Accept), UpgradeOptForce: godbus.MakeVariant(r.Force)}
	if r.Policy {
		opts = map[string]godbus.Variant{UpgradeOptPolicy: godbus.MakeVariant(true), UpgradeOptForce: godbus.MakeVariant(r.Force)}
	}
	if r.NoSupersede {
		opts[UpgradeOptSupersede] = godbus.MakeVariant(false)
	}
	if len(r.Health) > 0 {
		opts[UpgradeOptHealth] = godbus.MakeVariant(r.Health)
	}
	if len(r.TargetHealth) > 0 {
		opts[UpgradeOptTargetHealth] = godbus.MakeVariant(r.TargetHealth)
	}
	for k, d := range map[string]time.Duration{UpgradeOptSoak: r.Soak, UpgradeOptInterval: r.Interval, UpgradeOptCheckTimeout: r.CheckTimeout} {
		if d > 0 {
			opts[k] = godbus.MakeVariant(uint64(d.Milliseconds()))
		}
	}
	return opts
}

// UpgradeWith runs Upgrade with every option of r.
func (c *Client) UpgradeWith(ctx context.Context, ids []string, r UpgradeRequest) ([]UpgradeEntry, error) {
	var out []UpgradeEntry
	return out, c.call(ctx, "Upgrade", []any{&out}, ids, r.Options())
}

// Save records every entity's state.
func (c *Client) Save(ctx context.Context) error { return c.call(ctx, "Save", nil) }

// Restore replays the saved states.
func (c *Client) Restore(ctx context.Context, acceptedOnly bool) ([]EntityState, error) {
	var r []EntityState
	return r, c.call(ctx, "Restore", []any{&r}, acceptedOnly)
}

// Rescan re-reads the patch directories.
func (c *Client) Rescan(ctx context.Context) error { return c.call(ctx, "Rescan", nil) }

// ProcessStatus returns per-process states of a user patch.
func (c *Client) ProcessStatus(ctx context.Context, id string) ([]ProcessState, error) {
	var r []ProcessState
	return r, c.call(ctx, "ProcessStatus", []any{&r}, id)
}

// Resolve asks which patch RPMs apply to this host; the reply is JSON.
func (c *Client) Resolve(ctx context.Context, opts map[string]godbus.Variant) (string, error) {
	var r string
	return r, c.call(ctx, "Resolve", []any{&r}, opts)
}

// History returns the last upgrade runs, oldest first.
func (c *Client) History(ctx context.Context) ([]Record, error) {
	var js string
	if err := c.call(ctx, "History", []any{&js}); err != nil {
		return nil, err
	}
	var rs []Record
	if err := json.Unmarshal([]byte(js), &rs); err != nil {
		return nil, fmt.Errorf("History reply: %w", err)
	}
	return rs, nil
}
