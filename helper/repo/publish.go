package repo

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

	rpmfile "github.com/cavaliergopher/rpm"
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
	Published Advisory
	// Changed is false when everything was already published (Add is idempotent).
	Changed bool
}

var (
	cveRe      = regexp.MustCompile(`^CVE-[0-9]{4}-[0-9]{4,}$`)
	advisoryRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+-]*$`)
)

var severities = map[string]string{"critical": "Critical", "important": "Important", "moderate": "Moderate", "low": "Low", "none": "None"}

// readRPMHeader reads an RPM's header; the parser is third-party code fed with files
// from packagers, so a panic on a malformed file becomes an error.
func readRPMHeader(path string) (p *rpmfile.Package, err error) {
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("malformed rpm header: %v", r)
		}
	}()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err = rpmfile.Read(f)
	if err != nil {
		return nil, fmt.Errorf("not an RPM package: %s", notRPMReason(f, err))
	}
	return p, nil
}

// notRPMReason says in words why the RPM reader refused f with err; its own messages
// ("invalid file descriptor", "unexpected EOF") do not tell that the file is no RPM,
// or where it ends. (rpmbuild/rpmfile.Why says the same for the builder.)
func notRPMReason(f *os.File, err error) string {
	var size int64 = -1
	if fi, serr := f.Stat(); serr == nil {
		size = fi.Size()
	}
	head := make([]byte, 4)
	n, _ := f.ReadAt(head, 0)
	switch {
	case size == 0:
		return "the file is empty"
	case n < 4 || !bytes.Equal(head, []byte{0xed, 0xab, 0xee, 0xdb}):
		return fmt.Sprintf("it does not start with the RPM magic ed ab ee db (it starts with %q)", head[:n])
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		where := "the signature or the header"
		if size >= 0 && size < 96 {
			where = "the 96-byte lead"
		}
		return fmt.Sprintf("truncated: the file ends at byte %d, inside %s", size, where)
	}
	return strings.TrimPrefix(err.Error(), "rpm: ")
}

// inspectPatchRPM checks that path is a hot patch RPM and returns it as primary.xml
// would describe it.
func inspectPatchRPM(path string) (*patchPackage, error) {
	h, err := readRPMHeader(path)
	if err != nil {
		return nil, err
	}
	if h.SourceRPM() == "" {
		return nil, fmt.Errorf("%s is a source RPM", h.String())
	}
	var pp primaryPackage
	pp.Name, pp.Arch = h.Name(), h.Architecture()
	pp.Version.Ver, pp.Version.Rel = h.Version(), h.Release()
	if h.Epoch() > 0 {
		pp.Version.Epoch = fmt.Sprint(h.Epoch())
	}
	for _, d := range h.Requires() {
		e := rpmEntry{Name: d.Name(), Ver: d.Version(), Rel: d.Release()}
		if d.Flags()&(rpmfile.DepFlagLesser|rpmfile.DepFlagGreater|rpmfile.DepFlagEqual) == rpmfile.DepFlagEqual {
			e.Flags = "EQ"
		}
		if d.Epoch() > 0 {
			e.Epoch = fmt.Sprint(d.Epoch())
		}
		pp.Format.Requires = append(pp.Format.Requires, e)
	}
	patch, ok, err := pp.asPatch()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s is not a hot patch RPM (want Name: patch-<target>-<version>-<release>-<patch> and Requires: <target> = <version>-<release>)", pp.Name)
	}
	if !patch.RequiresSysc {
		return nil, fmt.Errorf("%s does not require syscare", pp.Name)
	}
	return patch, nil
}

// normalize validates the request and fills in defaults.
func (r *AddRequest) normalize(patches []*patchPackage) (Advisory, error) {
	a := Advisory{ID: strings.TrimSpace(r.Advisory), Title: strings.TrimSpace(r.Title),
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

func sortPackages(ps []Package) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].NEVRA() < ps[j].NEVRA() })
}

// sameAdvisory compares what an operator sees of an advisory; dates are left out so an
// identical re-run on another day stays a no-op.
func sameAdvisory(a, b Advisory) bool {
	norm := func(x Advisory) Advisory {
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

	var patches []*patchPackage
	for _, f := range req.RPMs {
		p, err := inspectPatchRPM(f)
		if err != nil {
			return nil, fmt.Errorf("patch rpm %s: %w", f, err)
		}
		p.Location = filepath.Base(f)
		patches = append(patches, p)
	}
	adv, err := req.normalize(patches)
	if err != nil {
		return nil, err
	}
	if req.Issued.IsZero() {
		req.Issued = time.Now()
	}

	// Read what the repository has now.
	existing, oldXML, inPrimary, err := readPublished(ctx, dir)
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

// readPublished returns the repository's advisories, its updateinfo.xml text (nil if
// none) and the NEVRAs of the patch packages in its primary.
func readPublished(ctx context.Context, dir string) ([]Advisory, []byte, map[string]bool, error) {
	inPrimary := map[string]bool{}
	s := &source{id: dir, base: dir}
	raw, err := s.read(ctx, "repodata/repomd.xml")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, inPrimary, nil
	}
	if err != nil {
		return nil, nil, nil, err
	}
	md, err := parseRepomd(raw)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	rc, err := s.readMeta(ctx, md, "primary")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	if rc != nil {
		pps, err := parsePrimary(rc)
		rc.Close()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("repository %s: %w", dir, err)
		}
		for _, p := range pps {
			inPrimary[p.Pkg.NEVRA()] = true
		}
	}
	rc, err = s.readMeta(ctx, md, "updateinfo")
	if err != nil || rc == nil {
		return nil, nil, inPrimary, err
	}
	defer rc.Close()
	text, err := io.ReadAll(rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("repository %s: updateinfo: %w", dir, err)
	}
	advs, err := parseUpdateinfo(bytes.NewReader(text))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("repository %s: %w", dir, err)
	}
	return advs, text, inPrimary, nil
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
func mergeUpdateinfo(old []byte, adv Advisory, patches []*patchPackage, issued time.Time, add bool) ([]byte, error) {
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
			return nil, metaErr("updateinfo: no closing </updates>")
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
