package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/policy"
	"github.com/syscare/syscare/helper/repo"
	"github.com/syscare/syscare/helper/server"
)

// repoResolver serves the Resolve method with helper/repo for the host under root.
func repoResolver(root string) server.Resolver {
	return func(ctx context.Context, opts map[string]godbus.Variant) (string, error) {
		plain := make(map[string]any, len(opts))
		usePolicy := false
		for k, v := range opts {
			if k == syscarebus.ResolveOptPolicy {
				b, ok := v.Value().(bool)
				if !ok {
					return "", fmt.Errorf("%w: resolve option %q: want a boolean (b)", syscarebus.ErrNotSupported, k)
				}
				usePolicy = b
				continue
			}
			plain[k] = v.Value()
		}
		req, err := repo.ParseOptions(plain)
		if err != nil {
			return "", fmt.Errorf("resolve options: %w", err)
		}
		if root != "/" {
			req.Root = root
		}
		var pol *policy.Policy
		if usePolicy {
			if pol, err = policy.Load(root); err != nil {
				return "", err
			}
			if err := pol.CheckWindow(time.Now()); err != nil {
				return "", err
			}
			// The newest patch the policy allows, which need not be the newest one.
			req.All = true
		}
		cs, err := repo.Resolve(ctx, req)
		if err != nil {
			return "", fmt.Errorf("resolve: %w", err)
		}
		if pol != nil {
			cs = allowed(pol, cs)
		}
		if cs == nil {
			cs = []syscarebus.Candidate{}
		}
		b, err := json.Marshal(cs)
		return string(b), err
	}
}

// allowed keeps the candidates the policy lets in, the newest per target (candidates
// come oldest first within a target), each with the gate a policy run would use.
func allowed(pol *policy.Policy, cs []syscarebus.Candidate) []syscarebus.Candidate {
	type key struct{ nevra string }
	last := map[key]int{}
	var keep []syscarebus.Candidate
	for _, c := range cs {
		if ok, _ := pol.Allows(c.Type, c.Severity, c.CVEs); !ok {
			continue
		}
		g, by := pol.GateFor(c.Target.Name, c.PatchName)
		cp := &syscarebus.CandidatePolicy{Accept: pol.Accept, Health: append(append([]string{}, g.Health...), by[c.Target.Name]...)}
		cp.Health = append(cp.Health, by[c.PatchName]...)
		if g.Soak > 0 {
			cp.Soak = g.Soak.String()
		}
		c.Policy = cp
		k := key{c.Target.NEVRA()}
		if i, ok := last[k]; ok {
			keep[i] = c
			continue
		}
		last[k] = len(keep)
		keep = append(keep, c)
	}
	return keep
}
