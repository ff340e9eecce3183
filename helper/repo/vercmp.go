package repo

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/syscare/syscare/dbus"
)

// Package is the contract's package identity (syscarebus.Package): a syscarebus.Candidate's target
// is one, and resolution compares them by name, EVR and arch.
type Package = syscarebus.Package

// ParseNEVRA parses name-[epoch:]version-release.arch.
func ParseNEVRA(s string) (Package, error) {
	var p Package
	dot := strings.LastIndexByte(s, '.')
	if dot <= 0 || dot == len(s)-1 {
		return p, fmt.Errorf("nevra %q: no arch", s)
	}
	p.Arch = s[dot+1:]
	nevr := s[:dot]
	rdash := strings.LastIndexByte(nevr, '-')
	if rdash <= 0 {
		return p, fmt.Errorf("nevra %q: no release", s)
	}
	vdash := strings.LastIndexByte(nevr[:rdash], '-')
	if vdash <= 0 {
		return p, fmt.Errorf("nevra %q: no version", s)
	}
	p.Name, p.Release = nevr[:vdash], nevr[rdash+1:]
	ev := nevr[vdash+1 : rdash]
	if colon := strings.IndexByte(ev, ':'); colon >= 0 {
		e, err := strconv.Atoi(ev[:colon])
		if err != nil || e < 0 {
			return p, fmt.Errorf("nevra %q: bad epoch", s)
		}
		p.Epoch, ev = e, ev[colon+1:]
	}
	p.Version = ev
	if p.Version == "" || p.Release == "" {
		return p, fmt.Errorf("nevra %q: empty version or release", s)
	}
	return p, nil
}

// CompareEVR orders two packages by epoch, version and release as RPM does; names and
// arches are not compared. An empty release on either side matches any release, as in
// a dependency written without one.
func CompareEVR(a, b Package) int {
	if a.Epoch != b.Epoch {
		if a.Epoch < b.Epoch {
			return -1
		}
		return 1
	}
	if c := Vercmp(a.Version, b.Version); c != 0 {
		return c
	}
	if a.Release == "" || b.Release == "" {
		return 0
	}
	return Vercmp(a.Release, b.Release)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isAlnum(c byte) bool { return isDigit(c) || isAlpha(c) }

// Vercmp compares two version (or release) strings with RPM's rpmvercmp rules: strings
// split into runs of digits and runs of ASCII letters, other characters separate runs;
// numeric runs compare as numbers and beat alphabetic runs; "~" sorts before anything,
// even the end of the string (pre-releases); "^" sorts after the end of the string but
// before anything else (post-release snapshots). It returns -1, 0 or 1.
func Vercmp(a, b string) int {
	if a == b {
		return 0
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		for i < len(a) && !isAlnum(a[i]) && a[i] != '~' && a[i] != '^' {
			i++
		}
		for j < len(b) && !isAlnum(b[j]) && b[j] != '~' && b[j] != '^' {
			j++
		}
		// Tilde first: whoever has it is older.
		ta, tb := i < len(a) && a[i] == '~', j < len(b) && b[j] == '~'
		if ta || tb {
			if !ta {
				return 1
			}
			if !tb {
				return -1
			}
			i, j = i+1, j+1
			continue
		}
		// Caret: older than anything except the end of the other string.
		ca, cb := i < len(a) && a[i] == '^', j < len(b) && b[j] == '^'
		if ca || cb {
			if i >= len(a) {
				return -1
			}
			if j >= len(b) {
				return 1
			}
			if !ca {
				return 1
			}
			if !cb {
				return -1
			}
			i, j = i+1, j+1
			continue
		}
		if i >= len(a) || j >= len(b) {
			break
		}
		si, sj := i, j
		numeric := isDigit(a[i])
		if numeric {
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
		} else {
			for i < len(a) && isAlpha(a[i]) {
				i++
			}
			for j < len(b) && isAlpha(b[j]) {
				j++
			}
		}
		sa, sb := a[si:i], b[sj:j]
		if sb == "" {
			// Different kinds of run: the numeric one is newer.
			if numeric {
				return 1
			}
			return -1
		}
		if numeric {
			sa, sb = strings.TrimLeft(sa, "0"), strings.TrimLeft(sb, "0")
			if len(sa) != len(sb) {
				if len(sa) > len(sb) {
					return 1
				}
				return -1
			}
		}
		if c := strings.Compare(sa, sb); c != 0 {
			return c
		}
	}
	switch {
	case i >= len(a) && j >= len(b):
		return 0
	case i < len(a):
		return 1
	default:
		return -1
	}
}
