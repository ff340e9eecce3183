package server

import (
	"context"
	"fmt"
	"slices"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
)

// Authorizer decides whether a bus caller may change the system.
type Authorizer interface {
	Authorize(ctx context.Context, sender string) error
}

const (
	polkitName = "org.freedesktop.PolicyKit1"
	polkitPath = "/org/freedesktop/PolicyKit1/Authority"
)

// BusAuthorizer allows uid 0, and otherwise asks polkit (when it is on the bus) whether
// the caller holds org.openeuler.syscare.manage. The caller's identity comes from the bus
// daemon, never from the message.
type BusAuthorizer struct{ Conn *godbus.Conn }

// Authorize implements Authorizer.
func (a *BusAuthorizer) Authorize(ctx context.Context, sender string) error {
	var uid uint32
	bus := a.Conn.BusObject()
	if err := bus.CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, sender).Store(&uid); err != nil {
		return fmt.Errorf("%w: caller identity: %w", syscarebus.ErrAccessDenied, err)
	}
	if uid == 0 {
		return nil
	}
	if !a.polkitAvailable(ctx) {
		return fmt.Errorf("%w: uid %d is not root and polkit is not available", syscarebus.ErrAccessDenied, uid)
	}
	subject := struct {
		Kind    string
		Details map[string]godbus.Variant
	}{"system-bus-name", map[string]godbus.Variant{"name": godbus.MakeVariant(sender)}}
	var res struct {
		Authorized bool
		Challenge  bool
		Details    map[string]string
	}
	const allowUserInteraction = 1
	call := a.Conn.Object(polkitName, polkitPath).CallWithContext(ctx, "org.freedesktop.PolicyKit1.Authority.CheckAuthorization", 0,
		subject, syscarebus.PolkitAction, map[string]string{}, uint32(allowUserInteraction), "")
	if err := call.Store(&res); err != nil {
		return fmt.Errorf("%w: polkit: %w", syscarebus.ErrAccessDenied, err)
	}
	if !res.Authorized {
		return fmt.Errorf("%w: uid %d is not authorized for %s", syscarebus.ErrAccessDenied, uid, syscarebus.PolkitAction)
	}
	return nil
}

func (a *BusAuthorizer) polkitAvailable(ctx context.Context) bool {
	var has bool
	bus := a.Conn.BusObject()
	if bus.CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, polkitName).Store(&has) == nil && has {
		return true
	}
	var names []string
	if bus.CallWithContext(ctx, "org.freedesktop.DBus.ListActivatableNames", 0).Store(&names) == nil {
		return slices.Contains(names, polkitName)
	}
	return false
}
