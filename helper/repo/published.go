package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	rpmfile "github.com/cavaliergopher/rpm"
)

// The reading side of a repository as a publisher (rpmbuild/publish) needs it: whether
// an RPM file is a hot patch by the rule resolution applies to primary.xml, and what a
// repository directory has published already.

// PatchRPM is a hot patch RPM file as primary.xml would list it.
type PatchRPM struct {
	Pkg    Package
	Target Package // Arch is the patch's arch
}

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

// InspectPatchRPM checks that path is a hot patch RPM and returns it as primary.xml
// would describe it.
func InspectPatchRPM(path string) (*PatchRPM, error) {
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
	return &PatchRPM{Pkg: patch.Pkg, Target: patch.Target}, nil
}

// ReadPublished returns the advisories of the repository in dir, its updateinfo.xml
// text (nil if none) and the NEVRAs of the patch packages in its primary.
func ReadPublished(ctx context.Context, dir string) ([]Advisory, []byte, map[string]bool, error) {
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
