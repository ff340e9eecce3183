package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/syscare/syscare/dbus"
)

// File is the policy's path under the root prefix.
const File = "/etc/syscare/upgrade.conf"

// Severities in rising order; updateinfo's spellings (case does not matter).
var Severities = []string{"none", "low", "moderate", "important", "critical"}

// Policy is a parsed upgrade.conf.
type Policy struct {
	// Path is where it was read from ("" when no file exists: the default policy).
	Path string
	// Types are the advisory types to install (security, bugfix, enhancement...);
	// empty: all.
	Types []string
	// MinSeverity is the lowest severity installed (index into Severities); advisories
	// without a severity count as "none".
	MinSeverity int
	// CVEAllow, when not empty, keeps only patches that fix one of these CVEs;
	// CVEDeny drops a patch that fixes any of these.
	CVEAllow, CVEDeny []string
	// Accept takes the patches to ACCEPTED after a healthy soak.
	Accept bool
	// Gate holds the health checks for every patch; Packages by target package name
	// (or patch name).
	Gate     Gate
	Packages map[string]Gate
	// Windows are the maintenance windows; empty: any time.
	Windows []Window
}

// Gate is a health gate: checks, their timeout, the soak and the interval (zero: the
// helper's defaults).
type Gate struct {
	Health       []string
	CheckTimeout time.Duration
	Soak         time.Duration
	Interval     time.Duration
}

// Window is a weekly maintenance window: on Days (time.Weekday bits; all when zero),
// from Start to End minutes after midnight local time (End before Start: over midnight).
type Window struct {
	Text       string
	Days       uint8
	Start, End int
}

// Load reads the policy under root. A missing file is the default policy (everything,
// any time, no health gate, not accepted); a file that is not root's or that others
// may write is refused, since its checks run as root.
func Load(root string) (*Policy, error) {
	p := filepath.Join(root, File)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return &Policy{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := trusted(f, p); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	pol, err := Parse(p, data)
	if err != nil {
		return nil, err
	}
	return pol, nil
}

// trusted refuses a policy file, or a directory above it, that another user than root
// owns or may write.
func trusted(f *os.File, path string) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	check := func(p string, fi os.FileInfo) error {
		s, ok := fi.Sys().(*syscall.Stat_t)
		if ok && (s.Uid != 0 || fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0) {
			return fmt.Errorf("%s: owned by uid %d with mode %v: the policy's health checks run as root, so it must be root's and not writable by others", p, s.Uid, fi.Mode().Perm())
		}
		return nil
	}
	if err := check(path, st); err != nil {
		return err
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if err := check(dir, fi); err != nil {
			return err
		}
		if dir == "/" || dir == "." {
			return nil
		}
	}
}

// Parse reads the policy text; name is used in errors ("name:LINE: ...").
func Parse(name string, data []byte) (*Policy, error) {
	pol := &Policy{Path: name, Packages: map[string]Gate{}}
	section := "upgrade"
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		fail := func(format string, a ...any) error {
			return fmt.Errorf("%s:%d: %s", name, n, fmt.Sprintf(format, a...))
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			if !strings.HasSuffix(line, "]") {
				return nil, fail("section header %q has no closing ]", line)
			}
			section = strings.Join(strings.Fields(line[1:len(line)-1]), " ")
			if pkg, ok := strings.CutPrefix(section, "package "); ok && pkg != "" && !strings.ContainsAny(pkg, " /") {
				if _, dup := pol.Packages[pkg]; dup {
					return nil, fail("section [package %s] given twice", pkg)
				}
				pol.Packages[pkg] = Gate{}
				continue
			}
			if section != "upgrade" {
				return nil, fail("unknown section [%s] (known: [upgrade], [package NAME])", section)
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fail("want key = value, got %q", line)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		var err error
		if pkg, ok := strings.CutPrefix(section, "package "); ok {
			g := pol.Packages[pkg]
			if err = g.set(key, val); err != nil {
				return nil, fail("[package %s] %v", pkg, err)
			}
			pol.Packages[pkg] = g
			continue
		}
		switch key {
		case "types":
			pol.Types = list(val)
		case "min_severity":
			pol.MinSeverity = slices.Index(Severities, strings.ToLower(val))
			if pol.MinSeverity < 0 {
				err = fmt.Errorf("min_severity %q: want one of %s", val, strings.Join(Severities, ", "))
			}
		case "cve_allow", "cve_deny":
			cves := list(val)
			for _, c := range cves {
				if !strings.HasPrefix(strings.ToUpper(c), "CVE-") {
					err = fmt.Errorf("%s: %q is not a CVE id", key, c)
				}
			}
			if key == "cve_allow" {
				pol.CVEAllow = append(pol.CVEAllow, cves...)
			} else {
				pol.CVEDeny = append(pol.CVEDeny, cves...)
			}
		case "accept":
			pol.Accept, err = boolean(key, val)
		case "window":
			var w Window
			if w, err = parseWindow(val); err == nil {
				pol.Windows = append(pol.Windows, w)
			}
		default:
			if err = pol.Gate.set(key, val); err != nil {
				err = fmt.Errorf("[upgrade] %w", err)
			}
		}
		if err != nil {
			return nil, fail("%v", err)
		}
	}
	return pol, sc.Err()
}

// set reads one key of a health gate.
func (g *Gate) set(key, val string) error {
	var err error
	switch key {
	case "health":
		if val == "" {
			return errors.New("health: empty command")
		}
		g.Health = append(g.Health, val)
		return nil
	case "check_timeout":
		g.CheckTimeout, err = duration(key, val)
	case "soak":
		g.Soak, err = duration(key, val)
	case "interval":
		g.Interval, err = duration(key, val)
	default:
		return fmt.Errorf("unknown key %q (known: types, min_severity, cve_allow, cve_deny, accept, window, health, check_timeout, soak, interval; in [package NAME]: health, check_timeout, soak, interval)", key)
	}
	return err
}

func list(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

func boolean(key, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "yes", "true", "1", "on":
		return true, nil
	case "no", "false", "0", "off":
		return false, nil
	}
	return false, fmt.Errorf("%s %q: want yes or no", key, v)
}

func duration(key, v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s %q: want a duration such as 30s, 2m or 500ms", key, v)
	}
	return d, nil
}

var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// parseWindow reads "[DAYS] HH:MM-HH:MM": DAYS is a comma list of days or day ranges
// (Mon-Fri,Sun); no DAYS means every day.
func parseWindow(v string) (Window, error) {
	w := Window{Text: v}
	fields := strings.Fields(v)
	bad := fmt.Errorf("window %q: want [DAYS] HH:MM-HH:MM, e.g. Mon-Fri 02:00-04:00", v)
	if len(fields) == 0 || len(fields) > 2 {
		return w, bad
	}
	if len(fields) == 2 {
		for _, part := range strings.Split(strings.ToLower(fields[0]), ",") {
			a, b, isRange := strings.Cut(part, "-")
			from, to := slices.Index(dayNames, a), slices.Index(dayNames, a)
			if isRange {
				to = slices.Index(dayNames, b)
			}
			if from < 0 || to < 0 {
				return w, bad
			}
			for d := from; ; d = (d + 1) % 7 {
				w.Days |= 1 << d
				if d == to {
					break
				}
			}
		}
	}
	a, b, ok := strings.Cut(fields[len(fields)-1], "-")
	var err1, err2 error
	w.Start, err1 = clock(a)
	w.End, err2 = clock(b)
	if !ok || err1 != nil || err2 != nil || w.Start == w.End {
		return w, bad
	}
	return w, nil
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, err
	}
	return t.Hour()*60 + t.Minute(), nil
}

// Open says whether t falls in a maintenance window (always, without windows).
func (p *Policy) Open(t time.Time) bool {
	if len(p.Windows) == 0 {
		return true
	}
	for _, w := range p.Windows {
		if w.contains(t) {
			return true
		}
	}
	return false
}

func (w Window) contains(t time.Time) bool {
	m := t.Hour()*60 + t.Minute()
	day := t.Weekday()
	if w.End < w.Start && m < w.End {
		day = (day + 6) % 7 // the early part of a window that began the day before
	}
	if w.Days != 0 && w.Days&(1<<day) == 0 {
		return false
	}
	if w.Start < w.End {
		return m >= w.Start && m < w.End
	}
	return m >= w.Start || m < w.End
}

// CheckWindow returns nil when a run may start at t, else an error of kind
// syscarebus.ErrOutsideWindow that lists the windows.
func (p *Policy) CheckWindow(t time.Time) error {
	if p.Open(t) {
		return nil
	}
	return fmt.Errorf("%w (%s)", syscarebus.ErrOutsideWindow, p.windowText())
}

// windowText lists the windows for messages.
func (p *Policy) windowText() string {
	var out []string
	for _, w := range p.Windows {
		out = append(out, w.Text)
	}
	return strings.Join(out, "; ")
}

// Allows says whether the policy lets an advisory of this type and severity that fixes
// these CVEs in, and if not, why.
func (p *Policy) Allows(typ, severity string, cves []string) (bool, string) {
	if len(p.Types) > 0 && !slices.ContainsFunc(p.Types, func(t string) bool { return strings.EqualFold(t, typ) }) {
		return false, fmt.Sprintf("advisory type %q not in types", typ)
	}
	sev := slices.Index(Severities, strings.ToLower(severity))
	if sev < 0 {
		sev = 0
	}
	if sev < p.MinSeverity {
		return false, fmt.Sprintf("severity %q below min_severity %s", severity, Severities[p.MinSeverity])
	}
	has := func(set []string) string {
		for _, c := range cves {
			if slices.ContainsFunc(set, func(s string) bool { return strings.EqualFold(s, c) }) {
				return c
			}
		}
		return ""
	}
	if c := has(p.CVEDeny); c != "" {
		return false, c + " is in cve_deny"
	}
	if len(p.CVEAllow) > 0 && has(p.CVEAllow) == "" {
		return false, "no CVE in cve_allow"
	}
	return true, ""
}

// GateFor returns the health gate for patches of these target packages (or patch
// names): the [upgrade] checks plus each package's, with the longest soak and timeout
// and the shortest interval given.
func (p *Policy) GateFor(names ...string) (g Gate, byName map[string][]string) {
	g = p.Gate
	byName = map[string][]string{}
	for _, n := range names {
		pg, ok := p.Packages[n]
		if !ok {
			continue
		}
		if len(pg.Health) > 0 {
			byName[n] = pg.Health
		}
		g.Soak = max(g.Soak, pg.Soak)
		if pg.Interval > 0 && (g.Interval == 0 || pg.Interval < g.Interval) {
			g.Interval = pg.Interval
		}
		// A package whose check needs longer says so: its timeout is not cut short.
		g.CheckTimeout = max(g.CheckTimeout, pg.CheckTimeout)
	}
	return g, byName
}
