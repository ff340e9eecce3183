package repo

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// vercmpCases were checked against rpm 4.18's rpm.vercmp; TestVercmpAgainstRPM checks
// them again against the rpm on the test machine.
var vercmpCases = []struct {
	a, b string
	want int
}{
	{"1.0", "1.0", 0}, {"1.0", "2.0", -1}, {"2.0", "1.0", 1}, {"2.0.1", "2.0.1", 0},
	{"2.0", "2.0.1", -1}, {"2.0.1a", "2.0.1", 1}, {"5.5p1", "5.5p2", -1}, {"5.5p10", "5.5p1", 1},
	{"10xyz", "10.1xyz", -1}, {"xyz10", "xyz10.1", -1}, {"xyz.4", "8", -1}, {"xyz.4", "2", -1},
	{"5.5p2", "5.6p1", -1}, {"5.6p1", "6.5p1", -1}, {"6.0.rc1", "6.0", 1}, {"10b2", "10a1", 1},
	{"10a2", "10b2", -1}, {"1.0aa", "1.0a", 1}, {"1.0a", "1.0aa", -1}, {"10.0001", "10.1", 0},
	{"10.0001", "10.0039", -1}, {"4.999.9", "5.0", -1}, {"20101121", "20101122", -1},
	{"2_0", "2_0", 0}, {"2.0", "2_0", 0}, {"a", "b", -1}, {"a+", "a_", 0}, {"+a", "+_", 1},
	{"+_", "_+", 0}, {"+", "_", 0}, {"1.0~rc1", "1.0~rc1", 0}, {"1.0~rc1", "1.0", -1},
	{"1.0", "1.0~rc1", 1}, {"1.0~rc1", "1.0~rc2", -1}, {"1.0~rc1~git123", "1.0~rc1", -1},
	{"1.0^", "1.0^", 0}, {"1.0^", "1.0", 1}, {"1.0", "1.0^", -1}, {"1.0^git1", "1.0", 1},
	{"1.0^git1", "1.0^git2", -1}, {"1.0^git1", "1.01", -1}, {"1.0^20160101", "1.0.1", -1},
	{"1.0^20160101^git1", "1.0^20160101", 1}, {"1.0~rc1^git1", "1.0~rc1", 1},
	{"1.0^git1~pre", "1.0^git1", -1}, {"1.0~rc1", "1.0^git1", -1}, {"0001", "1", 0},
	{"1.05", "1.5", 0}, {"a1", "1", -1}, {"1", "a1", 1}, {"^", "~", 1}, {"2.0", "2.0.", 0},
	{"1..0", "1.0", 0}, {"FC5", "fc4", -1}, {"HP001", "HP002", -1}, {"HP010", "HP9", 1},
	{"1.a", "1.1", -1}, {"1a", "1.1", -1}, {"0.9~", "0.9", -1}, {"1~^", "1~", 1},
	{"99999999999999999999", "99999999999999999998", 1}, {"1.0.0", "1.0", 1},
}

func TestVercmp(t *testing.T) {
	for _, c := range vercmpCases {
		if got := Vercmp(c.a, c.b); got != c.want {
			t.Errorf("Vercmp(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := Vercmp(c.b, c.a); got != -c.want {
			t.Errorf("Vercmp(%q, %q) = %d, want %d (antisymmetry)", c.b, c.a, got, -c.want)
		}
	}
}

// TestVercmpAgainstRPM runs every case through the installed rpm's own comparison in one
// rpm process, so the table itself cannot drift from RPM.
func TestVercmpAgainstRPM(t *testing.T) {
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Fatalf("rpm is a test dependency (tests/deps.sh): %v", err)
	}
	var lua strings.Builder
	for _, c := range vercmpCases {
		fmt.Fprintf(&lua, "print(rpm.vercmp(%q, %q) .. \" \") ", c.a, c.b)
	}
	out, err := exec.Command("rpm", "--eval", "%{lua: "+lua.String()+"}").Output()
	if err != nil {
		t.Fatalf("rpm --eval: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(vercmpCases) {
		t.Fatalf("rpm printed %d results for %d cases: %q", len(lines), len(vercmpCases), out)
	}
	for i, c := range vercmpCases {
		want, err := strconv.Atoi(lines[i])
		if err != nil {
			t.Fatalf("rpm result %q: %v", lines[i], err)
		}
		if got := Vercmp(c.a, c.b); got != want {
			t.Errorf("Vercmp(%q, %q) = %d, rpm says %d", c.a, c.b, got, want)
		}
	}
}

func TestCompareEVR(t *testing.T) {
	p := func(e int, v, r string) Package { return Package{Name: "x", Epoch: e, Version: v, Release: r} }
	cases := []struct {
		a, b Package
		want int
	}{
		{p(0, "1.0", "1"), p(0, "1.0", "1"), 0},
		{p(1, "1.0", "1"), p(0, "9.0", "9"), 1},
		{p(0, "1.0", "2"), p(0, "1.0", "10"), -1},
		{p(0, "1.0", ""), p(0, "1.0", "10"), 0},
		{p(0, "1.0~rc1", "1"), p(0, "1.0", "1"), -1},
	}
	for _, c := range cases {
		if got := CompareEVR(c.a, c.b); got != c.want {
			t.Errorf("CompareEVR(%s, %s) = %d, want %d", c.a.EVR(), c.b.EVR(), got, c.want)
		}
	}
}

func TestParseNEVRA(t *testing.T) {
	good := map[string]Package{
		"patch-redis-6.2.5-1-HP001-1-1.x86_64": {Name: "patch-redis-6.2.5-1-HP001", Version: "1", Release: "1", Arch: "x86_64"},
		"bash-2:5.1-3.el9.noarch":              {Name: "bash", Epoch: 2, Version: "5.1", Release: "3.el9", Arch: "noarch"},
	}
	for s, want := range good {
		got, err := ParseNEVRA(s)
		if err != nil || got != want {
			t.Errorf("ParseNEVRA(%q) = %+v, %v; want %+v", s, got, err, want)
		}
		if got.NEVRA() != s {
			t.Errorf("NEVRA() = %q, want %q", got.NEVRA(), s)
		}
	}
	for _, s := range []string{"", "x", "x.y", "a-1.x86_64", "a-x:1-1.noarch", "a--1.x86_64", "-1-1.x86_64"} {
		if _, err := ParseNEVRA(s); err == nil {
			t.Errorf("ParseNEVRA(%q) accepted", s)
		}
	}
}
