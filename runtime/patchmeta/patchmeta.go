// Package patchmeta reads and writes patch.json, the metadata of an installed patch
// (/usr/lib/syscare/patches/<uuid>/patch.json), shared by the builder that writes it
// and the helper that reads it.
package patchmeta

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// SchemaVersion is the version of the patch.json layout written by this package.
const SchemaVersion = 1

// FileName is the metadata file's name inside a patch directory.
const FileName = "patch.json"

// Kinds of patch.
const (
	KindUser   = "user"
	KindKernel = "kernel"
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid patch metadata")

// Patch is the content of patch.json.
type Patch struct {
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
	Entities    []Entity `json:"entities"`
	// Report is the file name of the builder's patch report in the patch directory, if
	// any: a JSON array with one report per patched ELF (its "target", the changed, new
	// and included functions, line-only changes left out, warnings, notes) and a one-line
	// "summary" that syscare info shows.
	Report string `json:"report,omitempty"`
}

// Package identifies the target package exactly.
type Package struct {
	Name    string `json:"name"`
	Epoch   int    `json:"epoch"`
	Version string `json:"version"`
	Release string `json:"release"`
	Arch    string `json:"arch"`
	License string `json:"license,omitempty"`
}

// Source is one .patch file the patch was built from.
type Source struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
}

// Entity is the patch of one ELF file.
type Entity struct {
	UUID string `json:"uuid"`
	// File is the patch object's (or kernel module's) file name in the patch directory.
	File string `json:"file"`
	// TargetPath is the absolute path of the patched ELF on the host (without --root).
	TargetPath string `json:"target_path"`
	// BuildID is the target ELF's GNU build-id in hex.
	BuildID string `json:"build_id"`
	// SHA256 is the digest of File.
	SHA256    string     `json:"sha256"`
	Functions []Function `json:"functions"`
}

// Function is one replaced function.
type Function struct {
	Name string `json:"name"`
	Pos  uint64 `json:"pos,omitempty"`
}

// NVR returns name-version-release of the target package.
func (p Package) NVR() string { return p.Name + "-" + p.Version + "-" + p.Release }

// EVR returns [epoch:]version-release, as RPM's Requires writes it.
func (p Package) EVR() string {
	if p.Epoch > 0 {
		return fmt.Sprintf("%d:%s-%s", p.Epoch, p.Version, p.Release)
	}
	return p.Version + "-" + p.Release
}

// NEVRA returns name-[epoch:]version-release.arch, as rpm -q prints with %{NEVRA}.
func (p Package) NEVRA() string { return p.Name + "-" + p.EVR() + "." + p.Arch }

// RPMName is the Name: of the patch RPM.
func (p *Patch) RPMName() string {
	return fmt.Sprintf("patch-%s-%s-%s-%s", p.Target.Name, p.Target.Version, p.Target.Release, p.Name)
}

// EntityName is the display name of an entity: <target nvr>/<name>-<ver>-<rel>/<elf file name>.
func (p *Patch) EntityName(e Entity) string {
	return fmt.Sprintf("%s/%s-%s-%s/%s", p.Target.NVR(), p.Name, p.Version, p.Release, filepath.Base(e.TargetPath))
}

var (
	uuidRe  = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	nameRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~^-]*$`)
	hexRe   = regexp.MustCompile(`^[0-9a-f]+$`)
	fnameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]*$`)
)

// Validate checks every field a loader relies on.
func (p *Patch) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if p.Schema != SchemaVersion {
		return bad("schema %d, want %d", p.Schema, SchemaVersion)
	}
	if !uuidRe.MatchString(p.UUID) {
		return bad("uuid %q is not a lowercase UUID", p.UUID)
	}
	// A slice, not a map: with several bad fields the same one is named every time.
	for _, f := range []struct{ field, v string }{{"name", p.Name}, {"version", p.Version}, {"release", p.Release},
		{"target.name", p.Target.Name}, {"target.version", p.Target.Version}, {"target.release", p.Target.Release}} {
		if !nameRe.MatchString(f.v) {
			return bad("%s %q is empty or has characters RPM does not allow", f.field, f.v)
		}
	}
	if p.Kind != KindUser && p.Kind != KindKernel {
		return bad("kind %q, want %q or %q", p.Kind, KindUser, KindKernel)
	}
	if len(p.Entities) == 0 {
		return bad("no entities")
	}
	seen := map[string]bool{p.UUID: true}
	for i, e := range p.Entities {
		if !uuidRe.MatchString(e.UUID) || seen[e.UUID] {
			return bad("entity %d: uuid %q is not a unique lowercase UUID", i, e.UUID)
		}
		seen[e.UUID] = true
		if !fnameRe.MatchString(e.File) {
			return bad("entity %d: file %q is not a plain file name", i, e.File)
		}
		if !filepath.IsAbs(e.TargetPath) || filepath.Clean(e.TargetPath) != e.TargetPath {
			return bad("entity %d: target_path %q is not a clean absolute path", i, e.TargetPath)
		}
		if e.BuildID != "" && !hexRe.MatchString(e.BuildID) {
			return bad("entity %d: build_id %q is not lowercase hex", i, e.BuildID)
		}
		if len(e.SHA256) != 64 || !hexRe.MatchString(e.SHA256) {
			return bad("entity %d: sha256 %q is not a lowercase SHA-256", i, e.SHA256)
		}
		if len(e.Functions) == 0 && p.Kind == KindUser {
			return bad("entity %d: no functions", i)
		}
	}
	for _, s := range p.Sources {
		if strings.Contains(s.File, "/") || len(s.SHA256) != 64 {
			return bad("source %q: bad file name or sha256", s.File)
		}
	}
	return nil
}

// Decode parses and validates patch.json content; unknown fields are refused so a
// newer schema is never half-understood.
func Decode(r io.Reader) (*Patch, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFile {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, maxFile)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Patch
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, jsonWhere(b, err))
	}
	// Text after the object would be silently ignored by a lenient reader and refused by
	// a strict one: refuse it here so every reader agrees.
	if off := dec.InputOffset(); len(bytes.TrimSpace(b[off:])) > 0 {
		line, col := lineCol(b, off+int64(len(b[off:])-len(bytes.TrimLeft(b[off:], " \t\r\n"))))
		return nil, fmt.Errorf("%w: line %d, column %d: data after the JSON object", ErrInvalid, line, col)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// maxFile bounds patch.json: real ones are a few kilobytes.
const maxFile = 16 << 20

// jsonWhere gives a JSON decoding error the line and column it happened at.
func jsonWhere(b []byte, err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read, the offending one included.
		line, col := lineCol(b, syn.Offset-1)
		return fmt.Sprintf("line %d, column %d: %v", line, col, err)
	case errors.As(err, &typ):
		line, col := lineCol(b, typ.Offset-1)
		return fmt.Sprintf("line %d, column %d: field %s: %s where %s is wanted", line, col, typ.Field, typ.Value, typ.Type)
	case errors.Is(err, io.EOF):
		return "empty file"
	case errors.Is(err, io.ErrUnexpectedEOF):
		line, col := lineCol(b, int64(len(b)))
		return fmt.Sprintf("line %d, column %d: the JSON ends early", line, col)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// lineCol turns a byte offset into a 1-based line and column.
func lineCol(b []byte, off int64) (int, int) {
	off = min(max(off, 0), int64(len(b)))
	before := b[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// Load reads and validates dir/patch.json.
func Load(dir string) (*Patch, error) {
	f, err := os.Open(filepath.Join(dir, FileName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, FileName), err)
	}
	return p, nil
}

// Encode writes p as indented JSON after validating it.
func (p *Patch) Encode(w io.Writer) error {
	if err := p.Validate(); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}

// FileSHA256 returns the lowercase hex SHA-256 of a file.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// VerifyFiles re-hashes every entity file in dir against the recorded digests.
func (p *Patch) VerifyFiles(dir string) error {
	for _, e := range p.Entities {
		sum, err := FileSHA256(filepath.Join(dir, e.File))
		if err != nil {
			return err
		}
		if sum != e.SHA256 {
			return fmt.Errorf("%s: sha256 %s does not match patch.json (%s)", e.File, sum, e.SHA256)
		}
	}
	return nil
}
