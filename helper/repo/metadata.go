package repo

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrMetadata is wrapped by every error about malformed, corrupt or missing repository
// metadata, so callers can tell a broken repository from an I/O or usage error.
var ErrMetadata = errors.New("bad metadata")

func metaErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMetadata, fmt.Sprintf(format, a...))
}

// repomd is repodata/repomd.xml: the index of a repository's metadata files.
type repomd struct {
	Data []repomdData `xml:"data"`
}

type repomdData struct {
	Type     string `xml:"type,attr"`
	Checksum struct {
		Type  string `xml:"type,attr"`
		Value string `xml:",chardata"`
	} `xml:"checksum"`
	Location struct {
		Href string `xml:"href,attr"`
	} `xml:"location"`
}

func parseRepomd(b []byte) (*repomd, error) {
	var md repomd
	if err := xml.Unmarshal(b, &md); err != nil {
		return nil, metaErr("repomd.xml: %v", err)
	}
	if len(md.Data) == 0 {
		return nil, metaErr("repomd.xml lists no metadata")
	}
	return &md, nil
}

// find returns the entry of the given type, or nil.
func (md *repomd) find(typ string) *repomdData {
	for i := range md.Data {
		if md.Data[i].Type == typ {
			return &md.Data[i]
		}
	}
	return nil
}

func newHash(typ string) (hash.Hash, error) {
	switch strings.ToLower(typ) {
	case "sha256":
		return sha256.New(), nil
	case "sha", "sha1":
		return sha1.New(), nil
	case "sha512":
		return sha512.New(), nil
	case "sha384":
		return sha512.New384(), nil
	case "sha224":
		return sha256.New224(), nil
	case "md5":
		return md5.New(), nil
	}
	return nil, metaErr("unknown checksum type %q", typ)
}

// verify checks raw (the file as stored) against the checksum repomd.xml records for it.
func (d *repomdData) verify(raw []byte) error {
	h, err := newHash(d.Checksum.Type)
	if err != nil {
		return err
	}
	h.Write(raw)
	got := hex.EncodeToString(h.Sum(nil))
	if want := strings.ToLower(strings.TrimSpace(d.Checksum.Value)); got != want {
		return metaErr("%s: checksum mismatch (%s %s in repomd.xml, file has %s)", d.Location.Href, d.Checksum.Type, want, got)
	}
	return nil
}

// decompress recognises the compression by its magic bytes rather than by the file
// name, since mirrors and caches rename files.
func decompress(raw []byte) (io.ReadCloser, error) {
	switch {
	case bytes.HasPrefix(raw, []byte{0x1f, 0x8b}):
		return gzip.NewReader(bytes.NewReader(raw))
	case bytes.HasPrefix(raw, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		r, err := xz.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		return io.NopCloser(r), nil
	case bytes.HasPrefix(raw, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(bytes.NewReader(raw), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(raw, []byte("BZh")):
		return io.NopCloser(bzip2.NewReader(bytes.NewReader(raw))), nil
	}
	return io.NopCloser(bytes.NewReader(raw)), nil
}

// rpmEntry is one dependency entry (rpm:entry) in primary.xml.
type rpmEntry struct {
	Name  string `xml:"name,attr"`
	Flags string `xml:"flags,attr"`
	Epoch string `xml:"epoch,attr"`
	Ver   string `xml:"ver,attr"`
	Rel   string `xml:"rel,attr"`
}

// primaryPackage holds the fields of one primary.xml <package> that resolution uses.
type primaryPackage struct {
	Name    string `xml:"name"`
	Arch    string `xml:"arch"`
	Version struct {
		Epoch string `xml:"epoch,attr"`
		Ver   string `xml:"ver,attr"`
		Rel   string `xml:"rel,attr"`
	} `xml:"version"`
	Location struct {
		Href string `xml:"href,attr"`
	} `xml:"location"`
	Format struct {
		Requires []rpmEntry `xml:"requires>entry"`
	} `xml:"format"`
}

// patchPackage is a hot patch RPM found in primary.xml, with its target.
type patchPackage struct {
	Pkg          Package
	Target       Package // Arch is the patch's arch; the target must match it
	PatchName    string
	Location     string // href relative to the repository base
	RequiresSysc bool
}

func atoiEpoch(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	e, err := strconv.Atoi(s)
	if err != nil || e < 0 {
		return 0, fmt.Errorf("bad epoch %q", s)
	}
	return e, nil
}

// asPatch recognises a hot patch package: its name is patch-<tname>-<tver>-<trel>-<patch>
// and it requires <tname> = [E:]<tver>-<trel> exactly. The name alone is not enough
// (a package may be called patch-something), so both must agree.
func (p *primaryPackage) asPatch() (*patchPackage, bool, error) {
	if !strings.HasPrefix(p.Name, "patch-") {
		return nil, false, nil
	}
	epoch, err := atoiEpoch(p.Version.Epoch)
	if err != nil {
		return nil, false, metaErr("package %s: %v", p.Name, err)
	}
	pp := &patchPackage{
		Pkg:      Package{Name: p.Name, Epoch: epoch, Version: p.Version.Ver, Release: p.Version.Rel, Arch: p.Arch},
		Location: p.Location.Href,
	}
	found := false
	for _, r := range p.Format.Requires {
		if r.Name == "syscare" {
			pp.RequiresSysc = true
			continue
		}
		if r.Flags != "EQ" || r.Ver == "" || r.Rel == "" || found {
			continue
		}
		prefix := "patch-" + r.Name + "-" + r.Ver + "-" + r.Rel + "-"
		if !strings.HasPrefix(p.Name, prefix) || len(p.Name) == len(prefix) {
			continue
		}
		te, err := atoiEpoch(r.Epoch)
		if err != nil {
			return nil, false, metaErr("package %s: requires %s: %v", p.Name, r.Name, err)
		}
		pp.Target = Package{Name: r.Name, Epoch: te, Version: r.Ver, Release: r.Rel, Arch: p.Arch}
		pp.PatchName = p.Name[len(prefix):]
		found = true
	}
	return pp, found, nil
}

// parsePrimary streams primary.xml and returns its hot patch packages. It decodes each
// <package> on its own so memory stays bounded by one package, not the repository.
func parsePrimary(r io.Reader) ([]*patchPackage, error) {
	var out []*patchPackage
	err := streamElements(r, "primary", "metadata", "package", func(dec *xml.Decoder, _ *xml.StartElement) error {
		p, err := decodePackage(dec)
		if err != nil {
			return metaErr("primary: %v", err)
		}
		if p == nil {
			return nil // not a hot patch: skipped without decoding
		}
		pp, ok, err := p.asPatch()
		if err != nil {
			return err
		}
		if ok && pp.RequiresSysc {
			out = append(out, pp)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// streamElements reads a repository metadata file token by token and calls each for
// every <elem> (its start tag consumed; each reads the element to its end), skipping
// every other element whole. The file must have its <root> element. Errors name the
// file as what ("primary", "updateinfo").
func streamElements(r io.Reader, what, root, elem string, each func(*xml.Decoder, *xml.StartElement) error) error {
	dec := xml.NewDecoder(r)
	sawRoot := false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return metaErr("%s: %v", what, err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch se.Name.Local {
		case root:
			sawRoot = true
		case elem:
			if err := each(dec, &se); err != nil {
				return err
			}
		default:
			if err := dec.Skip(); err != nil {
				return metaErr("%s: %v", what, err)
			}
		}
	}
	if !sawRoot {
		return metaErr("%s: no <%s> element", what, root)
	}
	return nil
}

// decodePackage reads one <package> whose start tag was just consumed. Hot patches are a
// small part of a distribution's primary, so a package whose <name> (its first child)
// does not start with "patch-" is skipped without being unmarshalled; nil means skipped.
func decodePackage(dec *xml.Decoder) (*primaryPackage, error) {
	var p primaryPackage
	sawName := false
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.EndElement:
			if !sawName {
				return nil, errors.New("package without <name>")
			}
			return &p, nil
		case xml.StartElement:
			var err error
			switch t.Name.Local {
			case "name":
				if err = dec.DecodeElement(&p.Name, &t); err == nil {
					sawName = true
					if !strings.HasPrefix(p.Name, "patch-") {
						return nil, dec.Skip()
					}
				}
			case "arch":
				err = dec.DecodeElement(&p.Arch, &t)
			case "version":
				err = dec.DecodeElement(&p.Version, &t)
			case "location":
				err = dec.DecodeElement(&p.Location, &t)
			case "format":
				err = dec.DecodeElement(&p.Format, &t)
			default:
				err = dec.Skip()
			}
			if err != nil {
				return nil, err
			}
		}
	}
}

// Advisory is one <update> of updateinfo.xml, reduced to what resolution and
// publishing compare.
type Advisory struct {
	ID          string
	Type        string
	Severity    string
	Title       string
	Description string
	CVEs        []string
	// Packages lists the package NEVRAs of its hot_patch_collection and collection.
	Packages []Package
}

type uiPackage struct {
	Name     string `xml:"name,attr"`
	Epoch    string `xml:"epoch,attr"`
	Version  string `xml:"version,attr"`
	Release  string `xml:"release,attr"`
	Arch     string `xml:"arch,attr"`
	Filename string `xml:"filename"`
}

type uiUpdate struct {
	Type        string `xml:"type,attr"`
	ID          string `xml:"id"`
	Title       string `xml:"title"`
	Severity    string `xml:"severity"`
	Description string `xml:"description"`
	References  []struct {
		ID   string `xml:"id,attr"`
		Type string `xml:"type,attr"`
	} `xml:"references>reference"`
	Collections []struct {
		Packages []uiPackage `xml:"package"`
	} `xml:"pkglist>collection"`
	HotPatch []struct {
		Packages []uiPackage `xml:"package"`
	} `xml:"pkglist>hot_patch_collection"`
}

func (u *uiUpdate) advisory() (Advisory, error) {
	a := Advisory{ID: strings.TrimSpace(u.ID), Type: u.Type, Severity: strings.TrimSpace(u.Severity),
		Title: strings.TrimSpace(u.Title), Description: strings.TrimSpace(u.Description)}
	if a.ID == "" {
		return a, metaErr("updateinfo: <update> without <id>")
	}
	for _, r := range u.References {
		if strings.EqualFold(r.Type, "cve") && r.ID != "" {
			a.CVEs = append(a.CVEs, r.ID)
		}
	}
	seen := map[Package]bool{}
	add := func(ps []uiPackage) error {
		for _, p := range ps {
			e, err := atoiEpoch(p.Epoch)
			if err != nil {
				return metaErr("updateinfo: advisory %s: package %s: %v", a.ID, p.Name, err)
			}
			pk := Package{Name: p.Name, Epoch: e, Version: p.Version, Release: p.Release, Arch: p.Arch}
			if !seen[pk] {
				seen[pk] = true
				a.Packages = append(a.Packages, pk)
			}
		}
		return nil
	}
	for _, c := range u.HotPatch {
		if err := add(c.Packages); err != nil {
			return a, err
		}
	}
	for _, c := range u.Collections {
		if err := add(c.Packages); err != nil {
			return a, err
		}
	}
	return a, nil
}

// parseUpdateinfo streams updateinfo.xml into advisories.
func parseUpdateinfo(r io.Reader) ([]Advisory, error) {
	var out []Advisory
	err := streamElements(r, "updateinfo", "updates", "update", func(dec *xml.Decoder, se *xml.StartElement) error {
		var u uiUpdate
		if err := dec.DecodeElement(&u, se); err != nil {
			return metaErr("updateinfo: %v", err)
		}
		a, err := u.advisory()
		if err != nil {
			return err
		}
		out = append(out, a)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
