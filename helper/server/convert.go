package server

import (
	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/manager"
	"github.com/syscare/syscare/runtime/patchmeta"
)

// The manager's records turned into the contract's messages.

func contractPackage(p patchmeta.Package) syscarebus.Package {
	return syscarebus.Package{Name: p.Name, Epoch: p.Epoch, Version: p.Version, Release: p.Release, Arch: p.Arch, License: p.License}
}

// patchInfo is Info's description of p: patch.json, the directory, the entity states st
// (in entity order) and the report summary of each target ELF.
func patchInfo(p *manager.Patch, st []syscarebus.EntityState, sums map[string]string) syscarebus.PatchInfo {
	m := p.Meta
	pi := syscarebus.PatchInfo{Schema: m.Schema, UUID: m.UUID, Name: m.Name, Version: m.Version, Release: m.Release,
		Arch: m.Arch, Kind: m.Kind, Target: contractPackage(m.Target), Description: m.Description, Report: m.Report,
		Dir: p.Dir, Status: st, RPMName: m.RPMName(), Removed: p.Gone}
	for _, s := range m.Sources {
		pi.Sources = append(pi.Sources, syscarebus.Source{File: s.File, SHA256: s.SHA256})
	}
	for i, e := range m.Entities {
		ei := syscarebus.EntityInfo{UUID: e.UUID, File: e.File, TargetPath: e.TargetPath, BuildID: e.BuildID,
			SHA256: e.SHA256, Name: st[i].Name, Status: st[i].Status, ReportSummary: sums[e.TargetPath]}
		for _, f := range e.Functions {
			ei.Functions = append(ei.Functions, syscarebus.Function{Name: f.Name, Pos: f.Pos})
		}
		pi.Entities = append(pi.Entities, ei)
	}
	return pi
}

// upgradeEntries is Upgrade's reply.
func upgradeEntries(rs []manager.UpgradeResult) []syscarebus.UpgradeEntry {
	out := make([]syscarebus.UpgradeEntry, len(rs))
	for i, r := range rs {
		out[i] = syscarebus.UpgradeEntry{UUID: r.UUID, Name: r.Name, OldStatus: r.From.String(), Status: r.State.String(),
			Action: r.Action, Detail: r.Detail}
	}
	return out
}
