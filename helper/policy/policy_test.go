package policy

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const sample = `# unattended hot patch upgrades
[upgrade]
types = security, bugfix
min_severity = Important
cve_deny = CVE-2026-0002
accept = yes
health = systemctl is-system-running
soak = 30s
window = Mon-Fri 02:00-04:00
window = Sat,Sun 22:00-06:00

[package redis]
health = redis-cli ping
health = sh -c 'redis-cli info | grep -q loading:0'
soak = 2m
check_timeout = 20s
`

func TestParse(t *testing.T) {
	p, err := Parse("upgrade.conf", []byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p.Types, []string{"security", "bugfix"}) || Severities[p.MinSeverity] != "important" || !p.Accept ||
		len(p.Windows) != 2 || p.Gate.Soak != 30*time.Second || len(p.Packages["redis"].Health) != 2 {
		t.Fatalf("parsed %+v", p)
	}
	g, by := p.GateFor("redis", "victim")
	if g.Soak != 2*time.Minute || g.CheckTimeout != 20*time.Second || len(g.Health) != 1 || len(by["redis"]) != 2 || by["victim"] != nil {
		t.Fatalf("gate for redis: %+v %v", g, by)
	}
	for _, c := range []struct {
		typ, sev string
		cves     []string
		ok       bool
		why      string
	}{
		{"security", "Critical", []string{"CVE-2026-0001"}, true, ""},
		{"security", "moderate", nil, false, "below min_severity important"},
		{"enhancement", "Critical", nil, false, `advisory type "enhancement" not in types`},
		{"bugfix", "Important", []string{"CVE-2026-0002"}, false, "CVE-2026-0002 is in cve_deny"},
	} {
		ok, why := p.Allows(c.typ, c.sev, c.cves)
		if ok != c.ok || !strings.Contains(why, c.why) {
			t.Errorf("Allows(%s, %s, %v) = %v %q", c.typ, c.sev, c.cves, ok, why)
		}
	}
	allow, _ := Parse("x", []byte("cve_allow = CVE-1-1\n"))
	if ok, _ := allow.Allows("security", "", []string{"CVE-1-2"}); ok {
		t.Error("cve_allow let another CVE in")
	}
	// Mon 2026-11-30; the weekend windows run over midnight (Sunday night's into Monday).
	at := func(day, hm string) time.Time {
		tm, _ := time.ParseInLocation("2006-01-02 15:04", day+" "+hm, time.Local)
		return tm
	}
	for when, want := range map[time.Time]bool{at("2026-11-30", "03:00"): true, at("2026-12-01", "04:00"): false, at("2026-11-30", "04:00"): true,
		at("2026-12-05", "23:30"): true, at("2026-12-01", "05:00"): false, at("2026-12-06", "05:59"): true,
		at("2026-11-28", "03:00"): false, at("2026-11-29", "03:00"): true, at("2026-11-27", "23:00"): false} {
		if got := p.Open(when); got != want {
			t.Errorf("Open(%s) = %v, want %v", when.Format("Mon 15:04"), got, want)
		}
	}
}

// A broken file is an error that names the line.
func TestParseErrors(t *testing.T) {
	for text, want := range map[string]string{
		"[upgrade]\nmin_severity = urgent\n":  "x:2: min_severity \"urgent\"",
		"accept = maybe\n":                    "x:1: accept \"maybe\": want yes or no",
		"\n\nsevrity = low\n":                 "x:3: [upgrade] unknown key \"sevrity\"",
		"[package redis]\ntypes = security\n": "x:2: [package redis] unknown key \"types\"",
		"[updates]\n":                         "x:1: unknown section [updates]",
		"[upgrade\n":                          "x:1: section header",
		"soak\n":                              "x:1: want key = value",
		"soak = forever\n":                    "x:1: [upgrade] soak \"forever\"",
		"window = 25:00-26:00\n":              "x:1: window \"25:00-26:00\"",
		"window = Someday 01:00-02:00\n":      "x:1: window",
		"cve_deny = 2026-1\n":                 "x:1: cve_deny: \"2026-1\" is not a CVE id",
		"[package a]\n[package a]\n":          "x:2: section [package a] given twice",
	} {
		if _, err := Parse("x", []byte(text)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
}

// Load: no file is the default policy; a file others may write is refused.
func TestLoad(t *testing.T) {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	p, err := Load(root)
	if err != nil || p.Accept || len(p.Windows) != 0 {
		t.Fatalf("no file: %+v %v", p, err)
	}
	path := filepath.Join(root, File)
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte(sample), 0o644)
	if os.Getuid() == 0 {
		if _, err := Load(root); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(path, 0o666)
	if _, err := Load(root); err == nil || !strings.Contains(err.Error(), "not writable by others") {
		t.Fatalf("world-writable policy: %v", err)
	}
	os.Chmod(path, 0o644)
	os.WriteFile(path, []byte("accept = maybe\n"), 0o644)
	if _, err := Load(root); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Fatalf("broken policy: %v", err)
	}
}

// The example shipped in dbus/ parses.
func TestExample(t *testing.T) {
	data, err := os.ReadFile("../../dbus/upgrade.conf.example")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("upgrade.conf.example", data)
	if err != nil || !p.Accept || len(p.Windows) != 2 || len(p.Gate.Health) != 1 {
		t.Fatalf("example: %+v %v", p, err)
	}
}
