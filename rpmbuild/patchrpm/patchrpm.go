// Package patchrpm writes a hot patch's binary and source RPMs with rpmbuild, from the
// spec template in specs/.
package patchrpm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/specs"
)

// PatchesDir is where installed patches live; each patch in its own <uuid> directory.
const PatchesDir = "/usr/lib/syscare/patches"

// Input is what goes into the patch RPMs.
type Input struct {
	Patch *patchmeta.Patch
	// Payload are files installed into the patch directory (patch objects, reports);
	// patch.json is written from Patch.
	Payload []string
	// Sources are files that go only into the source RPM: the target's sources and spec,
	// and the .patch files, so that a later cumulative patch can be built from it.
	Sources []string
}

// Output names the RPMs written.
type Output struct {
	RPM, SRPM string
	Spec      string
}

type specData struct {
	*patchmeta.Patch
	RPMName     string
	License     string
	Description string
	Dir         string
	Payload     []string
	Sources     []string
}

// Spec renders the spec of in; payload and sources are referred to by file name.
func Spec(in Input) (string, error) {
	p := in.Patch
	d := specData{Patch: p, RPMName: p.RPMName(), License: p.Target.License,
		Dir: filepath.Join(PatchesDir, p.UUID)}
	if d.License == "" {
		d.License = "Unknown"
	}
	d.Description = p.Description
	if d.Description == "" {
		d.Description = fmt.Sprintf("Hot patch %s-%s-%s for %s.", p.Name, p.Version, p.Release, p.Target.NEVRA())
	}
	// Text from the command line must not be read as macros or as new spec sections.
	// rpm looks for section names (%install) before it expands %%, so a description
	// line that starts with % is indented by one space.
	lines := strings.Split(strings.ReplaceAll(d.Description, "%", "%%"), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "%") {
			lines[i] = " " + l
		}
	}
	d.Description = strings.Join(lines, "\n")
	d.License = strings.ReplaceAll(d.License, "%", "%%")
	seen := map[string]bool{}
	add := func(list *[]string, path string) error {
		b := filepath.Base(path)
		if seen[b] {
			return fmt.Errorf("two files named %q in the patch RPM", b)
		}
		if strings.ContainsAny(b, "% \t\n") {
			return fmt.Errorf("file name %q: RPM sources cannot hold %%, spaces or newlines", b)
		}
		seen[b] = true
		*list = append(*list, b)
		return nil
	}
	if err := add(&d.Payload, patchmeta.FileName); err != nil {
		return "", err
	}
	for _, f := range in.Payload {
		if err := add(&d.Payload, f); err != nil {
			return "", err
		}
	}
	d.Sources = append(d.Sources, d.Payload...)
	for _, f := range in.Sources {
		if err := add(&d.Sources, f); err != nil {
			return "", err
		}
	}
	t, err := template.New("spec").Parse(specs.UserPatch)
	if err != nil {
		return "", fmt.Errorf("spec template: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", fmt.Errorf("spec template: %w", err)
	}
	return b.String(), nil
}

// Build writes patch.json, the spec and the sources into the rpmbuild topdir top and runs
// rpmbuild -ba; log receives rpmbuild's output.
func Build(ctx context.Context, top string, in Input, log io.Writer) (*Output, error) {
	spec, err := Spec(in)
	if err != nil {
		return nil, err
	}
	src := filepath.Join(top, "SOURCES")
	for _, d := range []string{src, filepath.Join(top, "SPECS")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	var js bytes.Buffer
	if err := in.Patch.Encode(&js); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(src, patchmeta.FileName), js.Bytes(), 0o644); err != nil {
		return nil, err
	}
	for _, f := range append(append([]string{}, in.Payload...), in.Sources...) {
		if err := copyFile(f, filepath.Join(src, filepath.Base(f))); err != nil {
			return nil, err
		}
	}
	name := in.Patch.RPMName()
	specPath := filepath.Join(top, "SPECS", name+".spec")
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "rpmbuild", "-ba", "--nodeps", "--define", "_topdir "+top, specPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("rpmbuild of the patch RPM: %w", err)
	}
	nvr := fmt.Sprintf("%s-%s-%s", name, in.Patch.Version, in.Patch.Release)
	out := &Output{Spec: specPath,
		RPM:  filepath.Join(top, "RPMS", in.Patch.Arch, nvr+"."+in.Patch.Arch+".rpm"),
		SRPM: filepath.Join(top, "SRPMS", nvr+".src.rpm")}
	for _, f := range []string{out.RPM, out.SRPM} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("rpmbuild did not write %s: %w", filepath.Base(f), err)
		}
	}
	return out, nil
}

func copyFile(from, to string) error {
	if filepath.Clean(from) == filepath.Clean(to) {
		return nil
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
