package main

import (
	"context"
	"encoding/json"
	"fmt"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/repo"
	"github.com/syscare/syscare/helper/server"
)

// repoResolver serves the Resolve method with helper/repo for the host under root.
func repoResolver(root string) server.Resolver {
	return func(ctx context.Context, opts map[string]godbus.Variant) (string, error) {
		plain := make(map[string]any, len(opts))
		for k, v := range opts {
			plain[k] = v.Value()
		}
		req, err := repo.ParseOptions(plain)
		if err != nil {
			return "", fmt.Errorf("resolve options: %w", err)
		}
		if root != "/" {
			req.Root = root
		}
		cs, err := repo.Resolve(ctx, req)
		if err != nil {
			return "", fmt.Errorf("resolve: %w", err)
		}
		if cs == nil {
			cs = []syscarebus.Candidate{}
		}
		b, err := json.Marshal(cs)
		return string(b), err
	}
}
