// Package publish is the packager's side of a hot patch repository: it copies patch RPMs
// into a repository directory, records their advisory (CVEs, severity) in updateinfo
// and refreshes the metadata with createrepo_c. It sits with the builder because the
// packager runs it after syscare build (`syscare repo add`); the host's side, which
// reads repositories to resolve what applies, is helper/repo, whose reading of RPM
// files and metadata this package reuses.
package publish

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/syscare/syscare/helper/repo"
	"golang.org/x/sys/unix"
)

// ErrAdvisoryConflict is returned when an advisory id is already published with
// different content.
var ErrAdvisoryConflict = errors.New("advisory already published with different content")

// AddRequest publishes patch RPMs into a repository under one advisory.
type AddRequest struct {
	RepoDir string
	RPMs    []string
	// Advisory is the advisory id, e.g. SA-2024-1001.
	Advisory string
	CVEs     []string
	// Severity is Critical, Important, Moderate or Low; empty leaves it out.
	Severity string
	// Type is security, bugfix or enhancement; empty: security when CVEs are given,
	// else bugfix.
	Type        string
	Title       string
	Description string
	// Issued is the advisory date; zero: now.
	Issued time.Time
}

// AddResult says what Add changed.
type AddResult struct {
	// Copied lists the RPM file names copied into the repository.
	Copied []string
	// Published is the advisory as it is in the repository now.
	Published repo.Advisory
	// Changed is false when everything was already published (Add is idempotent).
	Changed bool
}

var (
	cveRe      = regexp.MustCompile(`^CVE-[0-9]{4}-[0-9]{4,}$`)
	advisoryRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+-]*$`)
)

var severities = map[string]string{"critical": "Critical", "important": "Important", "moderate": "Moderate", "low": "Low", "none": "None"}

// patchFile is a patch RPM being published, with its file name in the repository.
type patchFile struct {
	*repo.PatchRPM
	Location string
}

// normalize validates the request and fills in defaults.
func (r *AddRequest) normalize(patches []*patchFile) (repo.Advisory, error) {
	a := repo.Advisory{ID: strings.TrimSpace(r.Advisory), Title: strings.TrimSpace(r.Title),
		Description: strings.TrimSpace(r.Description)}
	if !advisoryRe.MatchString(a.ID) {
		return a, fmt.Errorf("advisory id %q: want letters, digits and ._:+-", r.Advisory)
	}
	for _, c := range r.CVEs {
		c = strings.ToUpper(strings.TrimSpace(c))
		if !cveRe.MatchString(c) {
			return a, fmt.Errorf("cve %q: want CVE-YYYY-NNNN", c)
		}
		if !slices.Contains(a.CVEs, c) {
			a.CVEs = append(a.CVEs, c)
		}
	}
	sort.Strings(a.CVEs)
	switch t := strings.ToLower(strings.TrimSpace(r.Type)); t {
	case "":
		a.Type = "bugfix"
		if len(a.CVEs) > 0 {
			a.Type = "security"
		}
	case "security", "bugfix", "enhancement":
		a.Type = t
	default:
		return a, fmt.Errorf("advisory type %q: want security, bugfix or enhancement", r.Type)
	}
	if s := strings.TrimSpace(r.Severity); s != "" {
		var ok bool
		if a.Severity, ok = severities[strings.ToLower(s)]; !ok {
			return a, fmt.Errorf("severity %q: want Critical, Important, Moderate or Low", s)
		}
	}
	var targets []string
	for _, p := range patches {
		a.Packages = append(a.Packages, p.Pkg)
		if nvr := p.Target.NVR(); !slices.Contains(targets, nvr) {
			targets = append(targets, nvr)
		}
	}
	sortPackages(a.Packages)
	if a.Title == "" {
		// Derived from the content only, so re-running the same command is idempotent.
		a.Title = "hot patch for " + strings.Join(targets, ", ")
	}
	if a.Description == "" {
		a.Description = a.Title
		if len(a.CVEs) > 0 {
			a.Description += " (" + strings.Join(a.CVEs, ", ") + ")"
		}
	}
	return a, nil
}

func sortPackages(ps []repo.Package) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].NEVRA() < ps[j].NEVRA() })
}

// sameAdvisory compares what an operator sees of an advisory; dates are left out so an
// identical re-run on another day stays a no-op.
func sameAdvisory(a, b repo.Advisory) bool {
	norm := func(x repo.Advisory) repo.Advisory {
		x.CVEs = slices.Clone(x.CVEs)
		sort.Strings(x.CVEs)
		x.Packages = slices.Clone(x.Packages)
		sortPackages(x.Packages)
		return x
	}
	a, b = norm(a), norm(b)
	return a.ID == b.ID && a.Type == b.Type && a.Severity == b.Severity && a.Title == b.Title &&
		a.Description == b.Description && slices.Equal(a.CVEs, b.CVEs) && slices.Equal(a.Packages, b.Packages)
}

// Add copies patch RPMs into a repository, adds (or finds) their advisory in its
// updateinfo and refreshes the metadata with createrepo_c and modifyrepo_c. Publishing
// the same content again changes nothing; an advisory id reused with other content is
// ErrAdvisoryConflict.
func Add(ctx context.Context, req AddRequest) (*AddResult, error) {
	if len(req.RPMs) == 0 {
		return nil, errors.New("no patch RPMs given")
	}
	dir, err := filepath.Abs(req.RepoDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("repository directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	var patches []*patchFile
	for _, f := range req.RPMs {
		p, err := repo.InspectPatchRPM(f)
		if err != nil {
			return nil, fmt.Errorf("patch rpm %s: %w", f, err)
		}
		patches = append(patches, &patchFile{PatchRPM: p, Location: filepath.Base(f)})
	}
	adv, err := req.normalize(patches)
	if err != nil {
		return nil, err
	}
	if req.Issued.IsZero() {
		req.Issued = time.Now()
	}

	// Read what the repository has now.
	existing, oldXML, inPrimary, err := repo.ReadPublished(ctx, dir)
	if err != nil {
		return nil, err
	}
	res := &AddResult{Published: adv}
	advisoryNew := true
	for _, e := range existing {
		if e.ID != adv.ID {
			continue
		}
		if !sameAdvisory(e, adv) {
			return nil, fmt.Errorf("advisory %s: %w", adv.ID, ErrAdvisoryConflict)
		}
		advisoryNew = false
	}

	// Copy the RPMs; a file of the same name must have the same content.
	for i, f := range req.RPMs {
		dst := filepath.Join(dir, patches[i].Location)
		copied, err := copyIfAbsent(f, dst)
		if err != nil {
			return nil, err
		}
		if copied {
			res.Copied = append(res.Copied, patches[i].Location)
		}
	}
	stale := advisoryNew || len(res.Copied) > 0
	for _, p := range patches {
		if !inPrimary[p.Pkg.NEVRA()] {
			stale = true
		}
	}
	if !stale {
		return res, nil
	}
	res.Changed = true

	newXML, err := mergeUpdateinfo(oldXML, adv, patches, req.Issued, advisoryNew)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "syscare-repo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	uiPath := filepath.Join(tmp, "updateinfo.xml")
	if err := os.WriteFile(uiPath, newXML, 0o644); err != nil {
		return nil, err
	}
	// --keep-all-metadata keeps comps, modules and the old updateinfo until modifyrepo_c
	// replaces the latter.
	if err := run(ctx, "createrepo_c", "--quiet", "--update", "--keep-all-metadata", dir); err != nil {
		return nil, err
	}
	if err := run(ctx, "modifyrepo_c", "--mdtype=updateinfo", uiPath, filepath.Join(dir, "repodata")); err != nil {
		return nil, err
	}
	return res, nil
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// lockDir serialises publishers of one repository.
func lockDir(dir string) (func(), error) {
	// O_NOFOLLOW: a symlink planted in a shared repository directory must not make
	// root create or open a file elsewhere.
	f, err := os.OpenFile(filepath.Join(dir, ".syscare-repo.lock"), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("repository lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("repository lock: %w", err)
	}
	return func() { f.Close() }, nil
}

func fileDigest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// copyIfAbsent copies src to dst unless dst has the same content already.
func copyIfAbsent(src, dst string) (bool, error) {
	ds, err := fileDigest(src)
	if err != nil {
		return false, err
	}
	dd, err := fileDigest(dst)
	switch {
	case err == nil && bytes.Equal(ds, dd):
		return false, nil
	case err == nil:
		return false, fmt.Errorf("%s exists with different content", dst)
	case !errors.Is(err, fs.ErrNotExist):
		return false, err
	}
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".rpm-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return false, fmt.Errorf("copy %s: %w", src, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), dst)
}

// Elements of a written <update>; DNF reads <collection>, openEuler's hot patch tools
// read <hot_patch_collection>, so each patch package is listed in both.
type xUpdate struct {
	XMLName     xml.Name `xml:"update"`
	From        string   `xml:"from,attr"`
	Status      string   `xml:"status,attr"`
	Type        string   `xml:"type,attr"`
	Version     string   `xml:"version,attr"`
	ID          string   `xml:"id"`
	Title       string   `xml:"title"`
	Severity    string   `xml:"severity,omitempty"`
	Release     string   `xml:"release"`
	Issued      xDate    `xml:"issued"`
	References  []xRef   `xml:"references>reference"`
	Description string   `xml:"description"`
	Pkglist     struct {
		Collection xColl `xml:"collection"`
		HotPatch   xColl `xml:"hot_patch_collection"`
	} `xml:"pkglist"`
}

type xDate struct {
	Date string `xml:"date,attr"`
}

type xRef struct {
	Href  string `xml:"href,attr"`
	ID    string `xml:"id,attr"`
	Title string `xml:"title,attr"`
	Type  string `xml:"type,attr"`
}

type xColl struct {
	Short    string `xml:"short,attr"`
	Name     string `xml:"name"`
	Packages []xPkg `xml:"package"`
}

type xPkg struct {
	Name     string `xml:"name,attr"`
	Epoch    string `xml:"epoch,attr"`
	Version  string `xml:"version,attr"`
	Release  string `xml:"release,attr"`
	Arch     string `xml:"arch,attr"`
	Filename string `xml:"filename"`
}

// mergeUpdateinfo returns old (kept byte for byte) with adv appended when add is set.
func mergeUpdateinfo(old []byte, adv repo.Advisory, patches []*patchFile, issued time.Time, add bool) ([]byte, error) {
	if len(bytes.TrimSpace(old)) == 0 {
		old = []byte("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<updates>\n</updates>\n")
	}
	if !add {
		return old, nil
	}
	u := xUpdate{From: "syscare", Status: "stable", Type: adv.Type, Version: "1", ID: adv.ID,
		Title: adv.Title, Severity: adv.Severity, Release: "syscare", Description: adv.Description,
		Issued: xDate{issued.UTC().Format("2006-01-02 15:04:05")}}
	for _, c := range adv.CVEs {
		u.References = append(u.References, xRef{Href: "https://nvd.nist.gov/vuln/detail/" + c, ID: c, Title: c, Type: "cve"})
	}
	var pkgs []xPkg
	for _, p := range patches {
		pkgs = append(pkgs, xPkg{Name: p.Pkg.Name, Epoch: fmt.Sprint(p.Pkg.Epoch), Version: p.Pkg.Version,
			Release: p.Pkg.Release, Arch: p.Pkg.Arch, Filename: p.Location})
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name+pkgs[i].Arch < pkgs[j].Name+pkgs[j].Arch })
	u.Pkglist.Collection = xColl{Short: "syscare", Name: "syscare hot patches", Packages: pkgs}
	u.Pkglist.HotPatch = xColl{Short: "syscare", Name: "syscare hot patches", Packages: pkgs}
	elem, err := xml.MarshalIndent(u, "  ", "  ")
	if err != nil {
		return nil, err
	}
	end := bytes.LastIndex(old, []byte("</updates>"))
	if end < 0 {
		if bytes.Contains(old, []byte("<updates/>")) {
			old = bytes.Replace(old, []byte("<updates/>"), []byte("<updates>\n</updates>"), 1)
			end = bytes.LastIndex(old, []byte("</updates>"))
		} else {
			return nil, fmt.Errorf("%w: updateinfo: no closing </updates>", repo.ErrMetadata)
		}
	}
	var out bytes.Buffer
	out.Write(old[:end])
	if end > 0 && old[end-1] != '\n' {
		out.WriteByte('\n')
	}
	out.Write(elem)
	out.WriteByte('\n')
	out.Write(old[end:])
	return out.Bytes(), nil
}
