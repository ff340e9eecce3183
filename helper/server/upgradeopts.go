package server

import (
	"context"
	"fmt"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/health"
	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/helper/policy"
)

// readUpgradeOptions reads Upgrade's options and says whether the run is under the
// policy file. An unknown key or a value of the wrong type is refused, so that a
// misspelt option never silently does less than asked; so are the options the policy
// sets itself, alongside it.
func readUpgradeOptions(opts map[string]godbus.Variant) (manager.UpgradeOptions, bool, error) {
	uo, err := parseUpgradeOptions(opts)
	if err != nil {
		return uo, false, err
	}
	v, ok := opts[syscarebus.UpgradeOptPolicy]
	if !ok {
		return uo, false, nil
	}
	pol, ok := v.Value().(bool)
	if !ok {
		return uo, false, fmt.Errorf("%w: upgrade option %q: want a boolean (b), got %s", syscarebus.ErrNotSupported, syscarebus.UpgradeOptPolicy, v.Signature())
	}
	if pol {
		for _, k := range []string{syscarebus.UpgradeOptHealth, syscarebus.UpgradeOptTargetHealth, syscarebus.UpgradeOptSoak,
			syscarebus.UpgradeOptInterval, syscarebus.UpgradeOptCheckTimeout} {
			if _, set := opts[k]; set {
				return uo, false, fmt.Errorf("%w: upgrade option %q with policy: a policy run takes its health gate from %s", syscarebus.ErrNotSupported, k, policy.File)
			}
		}
		if uo.Accept {
			return uo, false, fmt.Errorf("%w: upgrade option accept with policy: a policy run takes accept from %s", syscarebus.ErrNotSupported, policy.File)
		}
	}
	return uo, pol, nil
}

func parseUpgradeOptions(opts map[string]godbus.Variant) (manager.UpgradeOptions, error) {
	var uo manager.UpgradeOptions
	var lines []string
	byTarget := map[string][]string{}
	timeout := health.DefaultTimeout
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := opts[k].Value()
		bad := func(want string) error {
			return fmt.Errorf("%w: upgrade option %q: want %s, got %s", syscarebus.ErrNotSupported, k, want, opts[k].Signature())
		}
		var ok bool
		switch k {
		case syscarebus.UpgradeOptAccept:
			uo.Accept, ok = v.(bool)
		case syscarebus.UpgradeOptForce:
			uo.Force, ok = v.(bool)
		case syscarebus.UpgradeOptSupersede:
			var sup bool
			sup, ok = v.(bool)
			uo.NoSupersede = !sup
		case syscarebus.UpgradeOptHealth:
			lines, ok = v.([]string)
		case syscarebus.UpgradeOptTargetHealth:
			byTarget, ok = v.(map[string][]string)
		case syscarebus.UpgradeOptCheckTimeout, syscarebus.UpgradeOptSoak, syscarebus.UpgradeOptInterval:
			var ms int64
			if ms, ok = integer(v); !ok || ms < 0 {
				return uo, bad("a number of milliseconds (0 or more)")
			}
			d := time.Duration(ms) * time.Millisecond
			switch k {
			case syscarebus.UpgradeOptCheckTimeout:
				timeout = d
			case syscarebus.UpgradeOptSoak:
				uo.Health.Soak = d
			default:
				uo.Health.Interval = d
			}
		case syscarebus.UpgradeOptPolicy:
			ok = true // read by readUpgradeOptions
		default:
			return uo, fmt.Errorf("%w: upgrade option %q (known: %s)", syscarebus.ErrNotSupported, k,
				strings.Join(syscarebus.UpgradeOptions, ", "))
		}
		if !ok {
			return uo, bad(map[string]string{syscarebus.UpgradeOptHealth: "a list of commands (as)",
				syscarebus.UpgradeOptTargetHealth: "commands per package or patch name (a{sas})"}[k] + orBool(k))
		}
	}
	var err error
	if uo.Health.Checks, err = checks(lines, timeout); err != nil {
		return uo, err
	}
	for name, ls := range byTarget {
		cs, err := checks(ls, timeout)
		if err != nil {
			return uo, fmt.Errorf("%w (for %s)", err, name)
		}
		if uo.Health.ByTarget == nil {
			uo.Health.ByTarget = map[string][]health.Check{}
		}
		uo.Health.ByTarget[name] = cs
	}
	return uo, nil
}

func orBool(k string) string {
	switch k {
	case syscarebus.UpgradeOptHealth, syscarebus.UpgradeOptTargetHealth:
		return ""
	}
	return "a boolean (b)"
}

func checks(lines []string, timeout time.Duration) ([]health.Check, error) {
	var out []health.Check
	for _, l := range lines {
		c, err := health.New(l, timeout)
		if err != nil {
			return nil, fmt.Errorf("%w: health check: %w", syscarebus.ErrNotSupported, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// integer reads any D-Bus integer type (dbus-send and Python pick different ones).
func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case int16:
		return int64(n), true
	case uint16:
		return int64(n), true
	case int32:
		return int64(n), true
	case uint32:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		if n > 1<<62 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}

// runChecksAs makes the health checks of a bus caller run as that caller: a polkit
// authorization to manage patches is not one to run any command as root. Root callers'
// checks run as root.
func (s *Server) runChecksAs(ctx context.Context, sender godbus.Sender, uo *manager.UpgradeOptions) error {
	if len(uo.Health.Checks) == 0 && len(uo.Health.ByTarget) == 0 || s.cfg.Conn == nil {
		return nil
	}
	uid, err := s.callerUID(ctx, sender)
	if err != nil {
		return err
	}
	if uid == 0 {
		return nil
	}
	u, err := user.LookupId(strconv.Itoa(int(uid)))
	if err != nil {
		return fmt.Errorf("%w: health checks of uid %d: %w", syscarebus.ErrAccessDenied, uid, err)
	}
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.Credential{Uid: uid, Gid: uint32(gid)}
	for i := range uo.Health.Checks {
		uo.Health.Checks[i].Cred = cred
	}
	for _, cs := range uo.Health.ByTarget {
		for i := range cs {
			cs[i].Cred = cred
		}
	}
	return nil
}

// callerUID asks the bus daemon who sent a call.
func (s *Server) callerUID(ctx context.Context, sender godbus.Sender) (uint32, error) {
	if s.cfg.Conn == nil {
		return 0, nil
	}
	var uid uint32
	if err := s.cfg.Conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid); err != nil {
		return 0, fmt.Errorf("%w: caller identity: %w", syscarebus.ErrAccessDenied, err)
	}
	return uid, nil
}

// policyOptions turns the policy's gate for the patches named into Upgrade's options;
// the checks come from a root-owned file and run as root.
func policyOptions(p *policy.Policy, names []string, force bool) (manager.UpgradeOptions, error) {
	g, byName := p.GateFor(names...)
	uo := manager.UpgradeOptions{Accept: p.Accept, Force: force}
	uo.Health.Soak, uo.Health.Interval = g.Soak, g.Interval
	timeout := g.CheckTimeout
	if timeout == 0 {
		timeout = health.DefaultTimeout
	}
	var err error
	if uo.Health.Checks, err = checks(g.Health, timeout); err != nil {
		return uo, fmt.Errorf("%s: %w", policy.File, err)
	}
	for n, ls := range byName {
		cs, err := checks(ls, timeout)
		if err != nil {
			return uo, fmt.Errorf("%s [package %s]: %w", policy.File, n, err)
		}
		if uo.Health.ByTarget == nil {
			uo.Health.ByTarget = map[string][]health.Check{}
		}
		uo.Health.ByTarget[n] = cs
	}
	return uo, nil
}
