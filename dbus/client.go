package syscarebus

import (
	"context"
	"fmt"
	"os"

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
	var r []UpgradeEntry
	opts := map[string]godbus.Variant{UpgradeOptAccept: godbus.MakeVariant(accept), UpgradeOptForce: godbus.MakeVariant(force)}
	return r, c.call(ctx, "Upgrade", []any{&r}, ids, opts)
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
