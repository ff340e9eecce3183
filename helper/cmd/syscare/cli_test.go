package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestNoRuntimeImports: the CLI talks to the helper only over D-Bus, so it must not link
// the patching runtime.
func TestNoRuntimeImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/syscare/syscare/runtime/") || strings.HasPrefix(p, "github.com/syscare/syscare/helper/manager") {
			t.Errorf("syscare imports %s", p)
		}
	}
}

func TestParse(t *testing.T) {
	o, err := parse([]string{"--bus", "session", "apply", "-f", "a", "b", "--json"})
	if err != nil || o.cmd != "apply" || !o.force || !o.json || o.bus != "session" || strings.Join(o.args, ",") != "a,b" {
		t.Fatalf("%+v %v", o, err)
	}
	o, _ = parse([]string{"build", "--force", "x"})
	if o.cmd != "build" || o.force || strings.Join(o.args, ",") != "--force,x" {
		t.Fatalf("build args not passed through: %+v", o)
	}
	var ue usageError
	for _, bad := range [][]string{{"apply"}, {"list", "x"}, {"frobnicate"}, {"--bogus", "list"}} {
		err := run(context.Background(), bad, &bytes.Buffer{}, &bytes.Buffer{})
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want usage error", bad, err)
		}
	}
}
