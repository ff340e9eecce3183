package rpmfile

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
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
	cases := map[string][]byte{
		"empty":     nil,
		"text":      []byte("this is not an rpm\n"),
		"truncated": good[:200],
		"garbled":   append(append([]byte{}, good[:96]...), make([]byte, 4096)...),
	}
	for name, data := range cases {
		p := filepath.Join(dir, name+".rpm")
		os.WriteFile(p, data, 0o644)
		if _, err := ReadHeader(p); !errors.Is(err, ErrNotRPM) {
			t.Errorf("%s: err %v, want ErrNotRPM", name, err)
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
