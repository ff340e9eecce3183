package manager

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/health"
)

// DefaultInterval is how often the health checks run over a soak when no interval is
// given.
const DefaultInterval = 5 * time.Second

// HealthGate is what Upgrade checks after activation and before it accepts.
type HealthGate struct {
	// Checks run for every upgrade that moves a patch.
	Checks []health.Check
	// ByTarget holds checks for the patches of one target package (key: its name) or
	// of one patch (key: the patch name, e.g. HP001).
	ByTarget map[string][]health.Check
	// Soak is how long the checks keep running after activation (0: once); Interval
	// how long between two runs (DefaultInterval when zero).
	Soak     time.Duration
	Interval time.Duration
}

// checksFor returns the checks that gate the upgrade of ps, each once.
func (g HealthGate) checksFor(ps []*Patch) []*health.Check {
	if len(ps) == 0 {
		return nil
	}
	var out []*health.Check
	seen := map[string]bool{}
	add := func(cs []health.Check) {
		for i := range cs {
			if !seen[cs[i].Line] {
				seen[cs[i].Line] = true
				out = append(out, &cs[i])
			}
		}
	}
	add(g.Checks)
	for _, p := range ps {
		add(g.ByTarget[p.Meta.Target.Name])
		add(g.ByTarget[p.Meta.Name])
	}
	return out
}

// soak runs every check at once, then every interval until the soak has passed (the
// last run at its end), and returns how many rounds passed, or an error of kind
// syscarebus.ErrHealth naming the first check that failed, why, and its output.
func soak(ctx context.Context, checks []*health.Check, g HealthGate, log logrus.FieldLogger) (int, error) {
	interval := g.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	start := time.Now()
	end := start.Add(g.Soak)
	for round := 1; ; round++ {
		for _, c := range checks {
			r := health.Run(ctx, c)
			l := log.WithFields(logrus.Fields{"check": c.Line, "round": round, "took": r.Took.Round(time.Millisecond).String()})
			if !r.OK {
				l.WithField("reason", r.Reason).Warn("health check failed")
				msg := fmt.Sprintf("%s: `%s` failed after %s of a %s soak: %s", syscarebus.ErrHealth, c.Line,
					time.Since(start).Round(time.Millisecond), g.Soak, r.Reason)
				if out := strings.TrimSpace(r.Output); out != "" {
					msg += "; output: " + out
				}
				return round - 1, &healthError{msg}
			}
			l.Debug("health check passed")
		}
		left := time.Until(end)
		if left <= 0 {
			return round, nil
		}
		select {
		case <-ctx.Done():
			return round, fmt.Errorf("%w: soak stopped after %s: %w", syscarebus.ErrHealth, time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-time.After(min(interval, left)):
		}
	}
}

// healthError is a failed check: its message is complete as it is and it wraps
// syscarebus.ErrHealth for the bus error name.
type healthError struct{ msg string }

func (e *healthError) Error() string { return e.msg }
func (e *healthError) Unwrap() error { return syscarebus.ErrHealth }

// checkNames lists the checks for a report: "`a`, `b`".
func checkNames(cs []*health.Check) string {
	var out []string
	for _, c := range cs {
		out = append(out, "`"+c.Line+"`")
	}
	return strings.Join(out, ", ")
}
