package repo

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/syscare/syscare/dbus"
)

// Request says which repositories to read and which patches to keep.
type Request struct {
	// Root is the host root prefix ("" for /): its rpmdb and, without MetadataDirs, its
	// /etc/yum.repos.d are read.
	Root string
	// MetadataDirs are repository directories (holding repodata/repomd.xml) or repodata
	// directories, such as the ones DNF already downloaded. Empty: the enabled
	// repositories configured under Root.
	MetadataDirs []string
	// CVEs and Advisories filter the result: a patch is kept if one of its advisories
	// is named or fixes one of the CVEs. Both empty: no filter.
	CVEs, Advisories []string
	// Installed overrides the rpmdb under Root (tests, callers that already have it).
	Installed []Package
	// All keeps every applicable patch; otherwise only the newest patch per target.
	All bool
}

// ParseOptions turns the D-Bus Resolve options (variant values already unwrapped) into a
// Request. Root is left for the caller, which knows the host root; unknown keys are
// refused so a misspelt filter never silently widens the result.
func ParseOptions(opts map[string]any) (Request, error) {
	var req Request
	strs := func(k string, v any) ([]string, error) {
		s, ok := v.([]string)
		if !ok {
			return nil, fmt.Errorf("option %q: want a string array (as), got %T", k, v)
		}
		return s, nil
	}
	for k, v := range opts {
		var err error
		switch k {
		case syscarebus.ResolveOptMetadataDirs:
			req.MetadataDirs, err = strs(k, v)
		case syscarebus.ResolveOptCVEs:
			req.CVEs, err = strs(k, v)
		case syscarebus.ResolveOptAdvisories:
			req.Advisories, err = strs(k, v)
		case syscarebus.ResolveOptAll:
			b, ok := v.(bool)
			if !ok {
				err = fmt.Errorf("option %q: want a boolean (b), got %T", k, v)
			}
			req.All = b
		default:
			err = fmt.Errorf("unknown option %q", k)
		}
		if err != nil {
			return req, err
		}
	}
	return req, nil
}

// targetKey identifies an installed package exactly.
type targetKey struct {
	name, evr, arch string
}

func keyOf(p Package) targetKey { return targetKey{p.Name, p.EVR(), p.Arch} }

// Resolve reads the repositories' metadata and returns the patch RPMs whose target is
// installed at exactly the EVR the patch requires, sorted by target and patch.
func Resolve(ctx context.Context, req Request) ([]syscarebus.Candidate, error) {
	var srcs []*source
	if len(req.MetadataDirs) > 0 {
		for _, d := range req.MetadataDirs {
			s, err := dirSource(d)
			if err != nil {
				return nil, err
			}
			srcs = append(srcs, s)
		}
	} else {
		var err error
		if srcs, err = configuredSources(req.Root); err != nil {
			return nil, err
		}
	}
	installed := req.Installed
	if installed == nil {
		var err error
		if installed, err = Installed(ctx, req.Root); err != nil {
			return nil, err
		}
	}
	var repos []*repoData
	for _, s := range srcs {
		rd, err := s.load(ctx)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %w", s.id, err)
		}
		repos = append(repos, rd)
	}
	return resolve(repos, installed, req), nil
}

// resolve is the pure part of Resolve.
func resolve(repos []*repoData, installed []Package, req Request) []syscarebus.Candidate {
	inst := make(map[targetKey]bool, len(installed))
	for _, p := range installed {
		inst[keyOf(p)] = true
	}
	wantCVE := setOf(req.CVEs, strings.ToUpper)
	wantAdv := setOf(req.Advisories, strings.ToUpper)
	filtered := len(wantCVE) > 0 || len(wantAdv) > 0

	seen := map[string]bool{}
	var cands []syscarebus.Candidate
	for _, rd := range repos {
		byPkg := map[Package][]*Advisory{}
		for i := range rd.advisories {
			a := &rd.advisories[i]
			for _, p := range a.Packages {
				byPkg[p] = append(byPkg[p], a)
			}
		}
		for _, pp := range rd.patches {
			nevra := pp.Pkg.NEVRA()
			if seen[nevra] {
				continue // the first repository that has it wins, as in DNF's cost order
			}
			if !targetInstalled(inst, pp.Target) {
				continue
			}
			c := syscarebus.Candidate{
				Package: nevra, Location: rd.src.location(pp.Location), RepoID: rd.src.id,
				Target: pp.Target, PatchName: pp.PatchName,
				PatchVersion: pp.Pkg.Version, PatchRelease: pp.Pkg.Release,
				Installed: inst[keyOf(pp.Pkg)],
			}
			if c.Target.Arch == "noarch" {
				c.Target.Arch = installedArch(installed, pp.Target)
			}
			advs := byPkg[pp.Pkg]
			matched := !filtered
			cves := map[string]bool{}
			for i, a := range advs {
				if i == 0 {
					c.Advisory, c.Severity, c.Type, c.Title = a.ID, a.Severity, a.Type, a.Title
				}
				if wantAdv[strings.ToUpper(a.ID)] {
					matched = true
				}
				for _, cve := range a.CVEs {
					if !cves[cve] {
						cves[cve] = true
						c.CVEs = append(c.CVEs, cve)
					}
					if wantCVE[strings.ToUpper(cve)] {
						matched = true
					}
				}
			}
			if !matched {
				continue
			}
			if c.CVEs == nil {
				c.CVEs = []string{}
			}
			seen[nevra] = true
			cands = append(cands, c)
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.Target.NEVRA() != b.Target.NEVRA() {
			return a.Target.NEVRA() < b.Target.NEVRA()
		}
		return comparePatch(a, b) < 0
	})
	if req.All {
		return cands
	}
	// Cumulative patches: the newest per target contains the older ones' fixes, so only
	// it is offered. Sorted ascending, the last of each target run is the newest.
	var out []syscarebus.Candidate
	for i, c := range cands {
		if i+1 < len(cands) && keyOf(cands[i+1].Target) == keyOf(c.Target) {
			continue
		}
		out = append(out, c)
	}
	return out
}

// comparePatch orders patches of one target: by patch name with RPM's version rules
// (HP001 < HP002 < HP010), then by patch version-release.
func comparePatch(a, b syscarebus.Candidate) int {
	if c := Vercmp(a.PatchName, b.PatchName); c != 0 {
		return c
	}
	return CompareEVR(Package{Version: a.PatchVersion, Release: a.PatchRelease},
		Package{Version: b.PatchVersion, Release: b.PatchRelease})
}

// targetInstalled reports whether the target is installed at exactly its EVR. A noarch
// patch (unusual, but legal) matches the target of any arch.
func targetInstalled(inst map[targetKey]bool, t Package) bool {
	if t.Arch != "noarch" {
		return inst[keyOf(t)]
	}
	for k := range inst {
		if k.name == t.Name && k.evr == t.EVR() {
			return true
		}
	}
	return false
}

func installedArch(installed []Package, t Package) string {
	for _, p := range installed {
		if p.Name == t.Name && p.EVR() == t.EVR() {
			return p.Arch
		}
	}
	return t.Arch
}

func setOf(xs []string, norm func(string) string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[norm(strings.TrimSpace(x))] = true
	}
	return m
}
