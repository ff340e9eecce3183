// Package rpmfile reads RPM package headers and unpacks RPM payloads for the builder.
package rpmfile

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/cavaliergopher/rpm"
)

// ErrNotRPM is wrapped when a file is not a readable RPM package.
var ErrNotRPM = errors.New("not an RPM package")

// Header is what the builder needs from an RPM header.
type Header struct {
	Path    string
	Name    string
	Epoch   int
	Version string
	Release string
	Arch    string
	License string
	// Source is true for a source RPM.
	Source bool
	// SourceRPM is the file name of the source RPM a binary package was built from.
	SourceRPM string
}

// NVR is name-version-release.
func (h *Header) NVR() string { return h.Name + "-" + h.Version + "-" + h.Release }

// VR is version-release.
func (h *Header) VR() string { return h.Version + "-" + h.Release }

// SourceFileName is the file name rpmbuild gives the source RPM of this package.
func (h *Header) SourceFileName() string { return h.NVR() + ".src.rpm" }

// leadTypeSource is the RPM lead's type for source packages.
const leadTypeSource = 1

// ReadHeader reads the header of the RPM file at path.
func ReadHeader(path string) (h *Header, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The header parser indexes into tag data taken from the file: a crafted or
	// truncated file must come back as an error, never as a crash.
	defer func() {
		if r := recover(); r != nil {
			h, err = nil, fmt.Errorf("%s: %w: %v", path, ErrNotRPM, r)
		}
	}()
	p, err := rpm.Read(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", path, ErrNotRPM, Why(f, err))
	}
	h = &Header{Path: path, Name: p.Name(), Epoch: p.Epoch(), Version: p.Version(), Release: p.Release(),
		Arch: p.Architecture(), License: p.License(), SourceRPM: p.SourceRPM()}
	h.Source = p.Lead.Type == leadTypeSource || h.SourceRPM == ""
	if h.Name == "" || h.Version == "" || h.Release == "" {
		return nil, fmt.Errorf("%s: %w: header without name, version or release", path, ErrNotRPM)
	}
	return h, nil
}

// rpmMagic starts every RPM file (the lead).
var rpmMagic = []byte{0xed, 0xab, 0xee, 0xdb}

// leadSize is the size of the RPM lead.
const leadSize = 96

// Why says in words why the RPM reader refused the file f with err: the reader's own
// messages ("invalid file descriptor", "unexpected EOF") do not tell a user that the
// file is no RPM at all, or where it ends.
func Why(f io.ReaderAt, err error) string {
	var size int64 = -1
	if st, ok := f.(interface{ Stat() (os.FileInfo, error) }); ok {
		if fi, serr := st.Stat(); serr == nil {
			size = fi.Size()
		}
	}
	head := make([]byte, len(rpmMagic))
	n, _ := f.ReadAt(head, 0)
	switch {
	case size == 0:
		return "the file is empty"
	case n < len(rpmMagic) || !bytes.Equal(head, rpmMagic):
		return fmt.Sprintf("it does not start with the RPM magic ed ab ee db (it starts with %q)", head[:n])
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		where := "the signature or the header"
		if size >= 0 && size < leadSize {
			where = fmt.Sprintf("the %d-byte lead", leadSize)
		}
		if size >= 0 {
			return fmt.Sprintf("truncated: the file ends at byte %d, inside %s", size, where)
		}
		return "truncated: the file ends inside " + where
	}
	return strings.TrimPrefix(err.Error(), "rpm: ")
}

// IsKernel tells whether a source package builds a Linux kernel.
func (h *Header) IsKernel() bool {
	return h.Name == "kernel" || strings.HasPrefix(h.Name, "kernel-") || h.Name == "linux"
}

// Extract unpacks the payload of the RPM at path into dir (rpm2cpio | cpio), keeping
// symlinks and modes; log receives the tools' messages.
func Extract(ctx context.Context, path, dir string, log io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r2c := exec.CommandContext(ctx, "rpm2cpio", path)
	cpio := exec.CommandContext(ctx, "cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cpio.Dir = dir
	pipe, err := r2c.StdoutPipe()
	if err != nil {
		return err
	}
	cpio.Stdin = pipe
	r2c.Stderr, cpio.Stdout, cpio.Stderr = log, log, log
	if err := r2c.Start(); err != nil {
		return fmt.Errorf("rpm2cpio: %w", err)
	}
	cerr := cpio.Run()
	rerr := r2c.Wait()
	if rerr != nil {
		return fmt.Errorf("unpack %s: rpm2cpio: %w", path, rerr)
	}
	if cerr != nil {
		return fmt.Errorf("unpack %s: cpio: %w", path, cerr)
	}
	return nil
}
