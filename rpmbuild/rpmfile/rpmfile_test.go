package rpmfile

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func buildRPM(t *testing.T) (srpm, bin string) {
	t.Helper()
	top := t.TempDir()
	spec := filepath.Join(top, "t.spec")
	os.WriteFile(spec, []byte(`Name: tpkg
Epoch: 2
Version: 1.2
Release: 3%{?dist}
Summary: t
License: MIT
BuildArch: noarch
%description
t
%install
mkdir -p %{buildroot}/usr/share/tpkg
ln -s target %{buildroot}/usr/share/tpkg/link
echo hi > %{buildroot}/usr/share/tpkg/file
%files
/usr/share/tpkg
`), 0o644)
	out, err := exec.Command("rpmbuild", "-ba", "--nodeps", "--define", "_topdir "+top, spec).CombinedOutput()
	if err != nil {
		t.Fatalf("rpmbuild: %v\n%s", err, out)
	}
	return filepath.Join(top, "SRPMS", "tpkg-1.2-3.src.rpm"), filepath.Join(top, "RPMS", "noarch", "tpkg-1.2-3.noarch.rpm")
}

func TestReadHeaderAndExtract(t *testing.T) {
	srpm, bin := buildRPM(t)
	s, err := ReadHeader(srpm)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Source || s.Name != "tpkg" || s.Epoch != 2 || s.VR() != "1.2-3" || s.License != "MIT" {
		t.Errorf("source header %+v", s)
	}
	b, err := ReadHeader(bin)
	if err != nil {
		t.Fatal(err)
	}
	if b.Source || b.Arch != "noarch" || b.SourceRPM != s.SourceFileName() {
		t.Errorf("binary header %+v", b)
	}
	dir := t.TempDir()
	if err := Extract(context.Background(), bin, dir, os.Stderr); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "usr/share/tpkg/link")); err != nil || l != "target" {
		t.Errorf("symlink: %q %v", l, err)
	}
	if c, _ := os.ReadFile(filepath.Join(dir, "usr/share/tpkg/file")); string(c) != "hi\n" {
		t.Errorf("file content %q", c)
	}
}

func TestBadFiles(t *testing.T) {
	srpm, _ := buildRPM(t)
	good, _ := os.ReadFile(srpm)
	dir := t.TempDir()
	// Each refusal says why in words, never the reader's bare "invalid file descriptor"
	// or "EOF".
	cases := map[string]struct {
		data []byte
		why  string
	}{
		"empty":       {nil, "the file is empty"},
		"text":        {[]byte("this is not an rpm\n"), `does not start with the RPM magic ed ab ee db (it starts with "this")`},
		"short lead":  {good[:50], "truncated: the file ends at byte 50, inside the 96-byte lead"},
		"truncated":   {good[:200], "truncated: the file ends at byte 200, inside the signature or the header"},
		"garbled":     {append(append([]byte{}, good[:96]...), make([]byte, 4096)...), "not an RPM package"},
		"three bytes": {good[:3], `does not start with the RPM magic ed ab ee db (it starts with "\xed\xab\xee")`},
	}
	for name, c := range cases {
		p := filepath.Join(dir, name+".rpm")
		os.WriteFile(p, c.data, 0o644)
		_, err := ReadHeader(p)
		if !errors.Is(err, ErrNotRPM) || !strings.Contains(err.Error(), c.why) || !strings.HasPrefix(err.Error(), p+": not an RPM package: ") {
			t.Errorf("%s: err %v, want ErrNotRPM saying %q", name, err, c.why)
		}
		if err != nil && (strings.Contains(err.Error(), "invalid file descriptor") || strings.HasSuffix(err.Error(), "EOF")) {
			t.Errorf("%s: reader jargon in %q", name, err)
		}
	}
	// A good header with a damaged payload: the header reads, the unpack fails.
	bad := append([]byte{}, good...)
	for i := len(bad) - 64; i < len(bad); i++ {
		bad[i] ^= 0xff
	}
	p := filepath.Join(dir, "payload.rpm")
	os.WriteFile(p, bad, 0o644)
	if err := Extract(context.Background(), p, t.TempDir(), os.Stderr); err == nil {
		t.Error("Extract of a damaged payload succeeded")
	}
}
