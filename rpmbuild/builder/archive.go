package builder

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Static archives are read back from the files themselves rather than from captured
// ar/ranlib/libtool commands: whatever tool made an archive, and whatever names it gave
// the members, the bytes of each member are what the linker takes. A member is known
// by the sha256 of its content, so a renamed copy, a member of the same name from
// another directory, or an archive of archives are all told apart correctly.

const (
	arMagic   = "!<arch>\n"
	thinMagic = "!<thin>\n"
	arHdrLen  = 60
)

// arMember is one object of a static archive.
type arMember struct {
	// Name is the member's name as the archive stores it.
	Name string
	// Data is the member's content; a thin archive's member content is read from Path.
	Data []byte
	// Path is the file a thin archive's member refers to (absolute), "" otherwise.
	Path string
	// Hash is the sha256 of the content, in hex ("" if a thin member's file is gone).
	Hash string
	// hdrOff is the offset of the member's header in its archive (-1 for a member of
	// a nested archive flattened in).
	hdrOff int
}

// isArchiveFile reports whether path starts like a regular or thin ar archive.
func isArchiveFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.Read(b[:]); err != nil {
		return false
	}
	return string(b[:]) == arMagic || string(b[:]) == thinMagic
}

// readArchive returns the objects of the archive at path, with the members of nested
// archives (an archive added to an archive, or a thin archive's reference to another
// archive) flattened in.
func readArchive(path string) ([]arMember, error) { return readArchiveAs(path, true) }

// readArchiveAs is readArchive; without flatten, an archive stored whole inside a
// regular archive stays one member (the linker does not look into it, and a rewritten
// copy must keep it as it is).
func readArchiveAs(path string, flatten bool) ([]arMember, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ms, err := parseArchiveData(data, filepath.Dir(path), 0, flatten)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", path, err)
	}
	return ms, nil
}

// maxNesting bounds archives of archives (and a thin archive that names itself).
const maxNesting = 8

func parseArchiveData(data []byte, dir string, depth int, flatten bool) ([]arMember, error) {
	if depth > maxNesting {
		return nil, errors.New("archives nested too deep")
	}
	thin := bytes.HasPrefix(data, []byte(thinMagic))
	if !thin && !bytes.HasPrefix(data, []byte(arMagic)) {
		return nil, errors.New("not an ar archive")
	}
	var out []arMember
	var longNames []byte
	off := len(arMagic)
	for off < len(data) {
		if data[off] == '\n' && off+1 == len(data) {
			break
		}
		if off+arHdrLen > len(data) {
			return out, fmt.Errorf("member header at offset %d: truncated", off)
		}
		hdr := data[off : off+arHdrLen]
		if string(hdr[58:60]) != "`\n" {
			return out, fmt.Errorf("member header at offset %d: bad terminator", off)
		}
		rawName := strings.TrimRight(string(hdr[0:16]), " ")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 {
			return out, fmt.Errorf("member header at offset %d: bad size %q", off, hdr[48:58])
		}
		body := off + arHdrLen
		special := rawName == "/" || rawName == "/SYM64/" || rawName == "//" || rawName == "__.SYMDEF" || rawName == "__.SYMDEF SORTED"
		// A thin archive stores only its symbol and name tables; members stay in their files.
		inline := !thin || special
		end := body
		if inline {
			if int64(len(data)-body) < size {
				return out, fmt.Errorf("member %q at offset %d: %d bytes, archive truncated", rawName, off, size)
			}
			end = body + int(size)
		}
		switch {
		case rawName == "//":
			longNames = data[body:end]
		case special:
		default:
			name, err := memberName(rawName, longNames)
			if err != nil {
				return out, fmt.Errorf("member at offset %d: %w", off, err)
			}
			m := arMember{Name: name, hdrOff: off}
			if thin && nestedRef(rawName) {
				// "/name:offset": the member at that offset of the archive named.
				m, err = nestedMember(name, rawName, dir, depth)
				if err != nil {
					return out, fmt.Errorf("member at offset %d: %w", off, err)
				}
				out = append(out, m)
				break
			}
			if thin {
				m.Path = name
				if !filepath.IsAbs(m.Path) {
					m.Path = filepath.Join(dir, m.Path)
				}
				if d, err := os.ReadFile(m.Path); err == nil {
					m.Data = d
				}
			} else {
				m.Data = data[body:end]
			}
			if (flatten || thin) && (bytes.HasPrefix(m.Data, []byte(arMagic)) || bytes.HasPrefix(m.Data, []byte(thinMagic))) {
				sub := dir
				if m.Path != "" {
					sub = filepath.Dir(m.Path)
				}
				nested, err := parseArchiveData(m.Data, sub, depth+1, flatten)
				if err != nil {
					return out, fmt.Errorf("nested archive %s: %w", name, err)
				}
				for _, n := range nested {
					n.hdrOff = -1
					out = append(out, n)
				}
				break
			}
			if m.Data != nil {
				m.Hash = sha256Hex(m.Data)
			}
			out = append(out, m)
		}
		off = end
		if off%2 == 1 {
			off++
		}
	}
	return out, nil
}

func nestedRef(raw string) bool { return strings.HasPrefix(raw, "/") && strings.Contains(raw, ":") }

// nestedMember reads the member a thin archive names as "/name:offset": the one whose
// header is at offset in the archive file name.
func nestedMember(name, raw, dir string, depth int) (arMember, error) {
	at, err := strconv.Atoi(raw[strings.IndexByte(raw, ':')+1:])
	if err != nil {
		return arMember{}, fmt.Errorf("name %q: bad nested offset", raw)
	}
	path := name
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return arMember{}, fmt.Errorf("nested archive: %w", err)
	}
	ms, err := parseArchiveData(data, filepath.Dir(path), depth+1, false)
	if err != nil {
		return arMember{}, fmt.Errorf("nested archive %s: %w", path, err)
	}
	for _, m := range ms {
		if m.hdrOff == at {
			m.hdrOff = -1
			return m, nil
		}
	}
	return arMember{}, fmt.Errorf("nested archive %s: no member at offset %d", path, at)
}

// memberName decodes a GNU/System V member name: "name/", or "/offset" into the long
// name table (a thin archive's nested member is "/offset:offset", the first naming it).
func memberName(raw string, longNames []byte) (string, error) {
	if !strings.HasPrefix(raw, "/") {
		return strings.TrimSuffix(raw, "/"), nil
	}
	num := raw[1:]
	if i := strings.IndexByte(num, ':'); i >= 0 {
		num = num[:i]
	}
	i, err := strconv.Atoi(num)
	if err != nil || i < 0 || i >= len(longNames) {
		return "", fmt.Errorf("name %q: no such entry in the long name table", raw)
	}
	n := longNames[i:]
	if j := bytes.IndexByte(n, '\n'); j >= 0 {
		n = n[:j]
	}
	return strings.TrimSuffix(string(n), "/"), nil
}

// writeArchive writes a regular GNU archive of members (their Name and Data) to path.
// It has no symbol index: run ranlib on it before a link.
func writeArchive(path string, members []arMember) error {
	var longNames bytes.Buffer
	names := make([]string, len(members))
	for i, m := range members {
		// Only the base name: a thin archive's member names are paths.
		n := filepath.Base(m.Name)
		if len(n) >= 16 || strings.ContainsAny(n, " /") {
			names[i] = "/" + strconv.Itoa(longNames.Len())
			longNames.WriteString(n + "/\n")
		} else {
			names[i] = n + "/"
		}
	}
	var buf bytes.Buffer
	buf.WriteString(arMagic)
	header := func(name string, size int) {
		fmt.Fprintf(&buf, "%-16s%-12s%-6s%-6s%-8s%-10d`\n", name, "0", "0", "0", "644", size)
	}
	if longNames.Len() > 0 {
		header("//", longNames.Len())
		buf.Write(longNames.Bytes())
		if buf.Len()%2 == 1 {
			buf.WriteByte('\n')
		}
	}
	for i, m := range members {
		header(names[i], len(m.Data))
		buf.Write(m.Data)
		if buf.Len()%2 == 1 {
			buf.WriteByte('\n')
		}
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
