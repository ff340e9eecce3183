package syscarebus

import (
	"fmt"
	"time"
)

// The Go type of every message of the contract. Struct replies (List, Status, ...) are
// marshalled by godbus in field order, so the order of fields is part of the contract;
// JSON replies (Info, Target, Resolve) use the json tags.

// EntityState is one (uuid, name, status) row: signature (sss).
type EntityState struct {
	UUID   string `json:"uuid"`
	Name   string `json:"name"`
	Status string `json:"status"`
}

// ListEntry is one row of List: signature (sssss).
type ListEntry struct {
	UUID    string `json:"uuid"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Patch   string `json:"patch_uuid"`
	Problem string `json:"problem,omitempty"`
}

// ProcessState is one row of ProcessStatus: signature (isssts).
type ProcessState struct {
	Pid    int32  `json:"pid"`
	UUID   string `json:"uuid"`
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
	// MountNS is the inode of the process's mount namespace (/proc/PID/ns/mnt), 0 if
	// it could not be read: processes of a container have another one than the host's.
	MountNS uint64 `json:"mount_ns"`
	// Container is the container id that the process's cgroup names (docker, podman,
	// containerd, CRI-O), "" if none.
	Container string `json:"container,omitempty"`
}

// UpgradeEntry is one row of Upgrade's reply: signature (ssssss). Action is one of the
// Upgrade* actions; Detail says why (which patch superseded this one).
type UpgradeEntry struct {
	UUID      string `json:"uuid"`
	Name      string `json:"name"`
	OldStatus string `json:"old_status"`
	Status    string `json:"status"`
	Action    string `json:"action"`
	Detail    string `json:"detail,omitempty"`
}

// What Upgrade did to an entity.
const (
	// UpgradeApplied: from NOT-APPLIED to ACTIVED (or ACCEPTED).
	UpgradeApplied = "APPLIED"
	// UpgradeActivated: from DEACTIVED to ACTIVED (or ACCEPTED).
	UpgradeActivated = "ACTIVATED"
	// UpgradeAccepted: from ACTIVED to ACCEPTED.
	UpgradeAccepted = "ACCEPTED"
	// UpgradeSuperseded: an older patch of the same target, taken to NOT-APPLIED.
	UpgradeSuperseded = "SUPERSEDED"
	// UpgradeUnchanged: already where the upgrade takes it.
	UpgradeUnchanged = "UNCHANGED"
)

// Option keys of Upgrade's a{sv} argument.
const (
	UpgradeOptAccept = "accept" // b: go to ACCEPTED, not only ACTIVED
	UpgradeOptForce  = "force"  // b: activate over a conflicting patch
	// UpgradeOptSupersede (b, default true): false leaves the other patches of the
	// targets alone (syscare apply with a health gate).
	UpgradeOptSupersede = "supersede"
	// UpgradeOptHealth (as): health check commands, each run without a shell (split
	// into words like a shell does, nothing expanded), as the caller, after activation.
	UpgradeOptHealth = "health"
	// UpgradeOptTargetHealth (a{sas}): more checks for the patches of one target
	// package or of one patch, by name.
	UpgradeOptTargetHealth = "target_health"
	// UpgradeOptCheckTimeout (integer, ms): a check running longer is killed and fails.
	UpgradeOptCheckTimeout = "check_timeout_ms"
	// UpgradeOptSoak and UpgradeOptInterval (integer, ms): how long the checks keep
	// running after activation, and how often.
	UpgradeOptSoak     = "soak_ms"
	UpgradeOptInterval = "interval_ms"
	// UpgradeOptPolicy (b): run under /etc/syscare/upgrade.conf: its window, its
	// accept and its health gate (the options accept and health* are then refused).
	UpgradeOptPolicy = "policy"
)

// UpgradeOptions lists every option key Upgrade knows.
var UpgradeOptions = []string{UpgradeOptAccept, UpgradeOptForce, UpgradeOptSupersede, UpgradeOptHealth,
	UpgradeOptTargetHealth, UpgradeOptCheckTimeout, UpgradeOptSoak, UpgradeOptInterval, UpgradeOptPolicy}

// Option keys of Resolve's a{sv} argument.
const (
	ResolveOptMetadataDirs = "metadata_dirs" // as
	ResolveOptCVEs         = "cves"          // as
	ResolveOptAdvisories   = "advisories"    // as
	ResolveOptAll          = "all"           // b
	// ResolveOptPolicy (b): keep what /etc/syscare/upgrade.conf allows, newest per
	// target; outside its maintenance window the error OutsideWindow.
	ResolveOptPolicy = "policy"
)

// Package is an RPM package identity: name, epoch, version, release, arch (and, in a
// patch's target, the license).
type Package struct {
	Name    string `json:"name"`
	Epoch   int    `json:"epoch"`
	Version string `json:"version"`
	Release string `json:"release"`
	Arch    string `json:"arch"`
	License string `json:"license,omitempty"`
}

// EVR returns [epoch:]version-release, the way RPM writes a dependency.
func (p Package) EVR() string {
	if p.Epoch > 0 {
		return fmt.Sprintf("%d:%s-%s", p.Epoch, p.Version, p.Release)
	}
	return p.Version + "-" + p.Release
}

// NEVRA returns name-[epoch:]version-release.arch.
func (p Package) NEVRA() string { return p.Name + "-" + p.EVR() + "." + p.Arch }

// NVR returns name-version-release.
func (p Package) NVR() string { return p.Name + "-" + p.Version + "-" + p.Release }

// PatchInfo is one element of Info's JSON reply: patch.json (the fields of
// runtime/patchmeta.Patch, in its order) and what the helper knows of the patch.
type PatchInfo struct {
	Schema      int      `json:"schema"`
	UUID        string   `json:"uuid"`
	Name        string   `json:"name"`
	Version     string   `json:"version"`
	Release     string   `json:"release"`
	Arch        string   `json:"arch"`
	Kind        string   `json:"kind"`
	Target      Package  `json:"target"`
	Description string   `json:"description,omitempty"`
	Sources     []Source `json:"sources"`
	Report      string   `json:"report,omitempty"`
	// Dir is the patch directory; Status the state of each entity.
	Dir     string        `json:"dir"`
	Status  []EntityState `json:"status"`
	RPMName string        `json:"rpm_name"`
	// Removed: the directory is gone while the patch is applied.
	Removed  bool         `json:"removed,omitempty"`
	Entities []EntityInfo `json:"entities"`
}

// Source is one .patch file a patch was built from.
type Source struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
}

// EntityInfo is one entity of PatchInfo: its patch.json entry, display name and status.
type EntityInfo struct {
	UUID       string     `json:"uuid"`
	File       string     `json:"file"`
	TargetPath string     `json:"target_path"`
	BuildID    string     `json:"build_id"`
	SHA256     string     `json:"sha256"`
	Functions  []Function `json:"functions"`
	Name       string     `json:"name"`
	Status     string     `json:"status"`
	// ReportSummary is the summary line of the builder's report for this entity's
	// target ELF, when the patch carries one.
	ReportSummary string `json:"report_summary,omitempty"`
}

// Function is one function an entity replaces.
type Function struct {
	Name string `json:"name"`
	Pos  uint64 `json:"pos,omitempty"`
}

// ReportSummary is what Info reads of each report in a patch's report file (the
// builder's rpmbuild/builder.ReportFile, a JSON array with one report per target ELF).
type ReportSummary struct {
	Target  string `json:"target"`
	Summary string `json:"summary"`
}

// TargetInfo is one element of Target's JSON reply.
type TargetInfo struct {
	UUID   string   `json:"uuid"`
	Patch  string   `json:"patch"`
	Target Package  `json:"target"`
	Files  []string `json:"files"`
}

// Candidate is one element of Resolve's JSON reply: a patch RPM that applies to a
// package installed on this host.
type Candidate struct {
	Advisory string   `json:"advisory"`
	Severity string   `json:"severity"`
	Type     string   `json:"type"`
	Title    string   `json:"title"`
	CVEs     []string `json:"cves"`
	// Package is the patch RPM's NEVRA.
	Package string `json:"package"`
	// Location is the RPM's path or URL; RepoID the repository's id (a configured
	// repository) or the metadata directory as passed in the metadata_dirs option.
	Location string `json:"location"`
	RepoID   string `json:"repo_id"`
	// Target is the installed package the patch applies to.
	Target       Package `json:"target"`
	PatchName    string  `json:"patch_name"`
	PatchVersion string  `json:"patch_version"`
	PatchRelease string  `json:"patch_release"`
	// Installed says the patch RPM itself is already installed.
	Installed bool `json:"installed"`
	// Policy is set by Resolve with the option policy: the gate the run would use.
	Policy *CandidatePolicy `json:"policy,omitempty"`
}

// Record is one upgrade run in History's JSON reply (oldest first): when, who asked
// (source: "policy" for a run under /etc/syscare/upgrade.conf, else "uid N"), the
// result (RunOK, RunFailed, RunSkipped, RunNothing), a one-line summary, what happened
// to each entity, and the error of a failed run.
type Record struct {
	Time    time.Time      `json:"time"`
	Source  string         `json:"source"`
	Result  string         `json:"result"`
	Summary string         `json:"summary"`
	IDs     []string       `json:"ids,omitempty"`
	Entries []UpgradeEntry `json:"entries,omitempty"`
	Error   string         `json:"error,omitempty"`
}

// Results of an upgrade run.
const (
	RunOK      = "ok"
	RunFailed  = "failed"
	RunSkipped = "skipped"
	RunNothing = "nothing to do"
)

// CandidatePolicy is what a policy run would do with a candidate (Resolve with the
// option policy): its health checks, soak and whether it is accepted.
type CandidatePolicy struct {
	Health []string `json:"health,omitempty"`
	Soak   string   `json:"soak,omitempty"`
	Accept bool     `json:"accept"`
}
