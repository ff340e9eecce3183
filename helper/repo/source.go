package repo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// maxMetadataSize bounds one downloaded metadata file; real primary files of large
// distributions are a few hundred MiB uncompressed but far less compressed.
const maxMetadataSize = 1 << 30

// source is one repository whose metadata can be read: a local directory or a URL.
type source struct {
	id   string
	base string // directory holding repodata/, or base URL ending in "/"
	web  bool
}

// location returns where the package at href lives, as a path or URL.
func (s *source) location(href string) string {
	if s.web {
		u, err := url.Parse(s.base)
		if err != nil {
			return href
		}
		r, err := url.Parse(href)
		if err != nil {
			return href
		}
		return u.ResolveReference(r).String()
	}
	if filepath.IsAbs(href) {
		return href
	}
	return filepath.Join(s.base, filepath.FromSlash(href))
}

var httpClient = &http.Client{Timeout: 5 * time.Minute}

// read returns the file at rel (slash separated, relative to the repository base).
func (s *source) read(ctx context.Context, rel string) ([]byte, error) {
	if !s.web {
		if strings.Contains("/"+rel+"/", "/../") {
			return nil, metaErr("location %q leaves the repository", rel)
		}
		b, err := os.ReadFile(filepath.Join(s.base, filepath.FromSlash(rel)))
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	u := s.location(rel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("get %s: %s", u, resp.Status)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w (%w)", err, fs.ErrNotExist)
		}
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataSize+1))
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", u, err)
	}
	if len(b) > maxMetadataSize {
		return nil, metaErr("%s is larger than %d bytes", u, maxMetadataSize)
	}
	return b, nil
}

// dirSource accepts a repository directory, its repodata/ directory, or a DNF cache
// directory of the repository (which has the same layout).
func dirSource(dir string) (*source, error) {
	dir = filepath.Clean(dir)
	if _, err := os.Stat(filepath.Join(dir, "repodata", "repomd.xml")); err == nil {
		return &source{id: dir, base: dir}, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "repomd.xml")); err == nil {
		return &source{id: dir, base: filepath.Dir(dir)}, nil
	}
	return nil, metaErr("%s: no repodata/repomd.xml", dir)
}

// repoData is the part of one repository that resolution needs.
type repoData struct {
	src        *source
	patches    []*patchPackage
	advisories []Advisory
}

func (s *source) readMeta(ctx context.Context, md *repomd, typ string) (io.ReadCloser, error) {
	d := md.find(typ)
	if d == nil {
		return nil, nil
	}
	raw, err := s.read(ctx, d.Location.Href)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, metaErr("%s listed in repomd.xml is missing: %v", typ, err)
		}
		return nil, err
	}
	if err := d.verify(raw); err != nil {
		return nil, err
	}
	rc, err := decompress(raw)
	if err != nil {
		return nil, metaErr("%s: %v", d.Location.Href, err)
	}
	return rc, nil
}

// load reads repomd.xml, primary and (if present) updateinfo of one repository.
func (s *source) load(ctx context.Context) (*repoData, error) {
	raw, err := s.read(ctx, "repodata/repomd.xml")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, metaErr("repomd.xml missing: %v", err)
		}
		return nil, err
	}
	md, err := parseRepomd(raw)
	if err != nil {
		return nil, err
	}
	if md.find("primary") == nil {
		return nil, metaErr("repomd.xml lists no primary")
	}
	// primary and updateinfo are independent: parse them side by side.
	rd := &repoData{src: s}
	var uiErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rc, err := s.readMeta(ctx, md, "updateinfo")
		if err != nil || rc == nil {
			uiErr = err
			return
		}
		defer rc.Close()
		rd.advisories, uiErr = parseUpdateinfo(rc)
	}()
	rc, err := s.readMeta(ctx, md, "primary")
	if err == nil {
		rd.patches, err = parsePrimary(rc)
		rc.Close()
	}
	<-done
	if err != nil {
		return nil, err
	}
	if uiErr != nil {
		return nil, uiErr
	}
	return rd, nil
}

// repoConfig is one enabled repository section of a .repo file.
type repoConfig struct {
	ID       string
	BaseURLs []string
}

// parseRepoFile reads the INI-style .repo format that yum and DNF share: [id] sections,
// key=value lines, and continuation lines that start with whitespace (baseurl lists).
func parseRepoFile(r io.Reader, vars map[string]string) ([]repoConfig, error) {
	type section struct {
		id   string
		keys map[string]string
	}
	var secs []*section
	var cur *section
	lastKey := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || trimmed[0] == '#' || trimmed[0] == ';' {
			continue
		}
		if (line[0] == ' ' || line[0] == '\t') && cur != nil && lastKey != "" {
			cur.keys[lastKey] += "\n" + trimmed
			continue
		}
		if trimmed[0] == '[' {
			if !strings.HasSuffix(trimmed, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", n, trimmed)
			}
			cur = &section{id: strings.TrimSpace(trimmed[1 : len(trimmed)-1]), keys: map[string]string{}}
			secs = append(secs, cur)
			lastKey = ""
			continue
		}
		k, v, ok := strings.Cut(trimmed, "=")
		if !ok || cur == nil {
			return nil, fmt.Errorf("line %d: expected key=value in a [section]: %q", n, trimmed)
		}
		lastKey = strings.ToLower(strings.TrimSpace(k))
		cur.keys[lastKey] = strings.TrimSpace(v)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []repoConfig
	for _, s := range secs {
		if s.id == "main" {
			continue
		}
		switch strings.ToLower(s.keys["enabled"]) {
		case "0", "false", "no", "off":
			continue
		}
		rc := repoConfig{ID: s.id}
		for _, u := range strings.FieldsFunc(s.keys["baseurl"], func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\n'
		}) {
			rc.BaseURLs = append(rc.BaseURLs, expandVars(u, vars))
		}
		out = append(out, rc)
	}
	return out, nil
}

// expandVars substitutes $name and ${name} for DNF's repository variables.
func expandVars(s string, vars map[string]string) string {
	return os.Expand(s, func(k string) string {
		if v, ok := vars[k]; ok {
			return v
		}
		return "$" + k
	})
}

// repoVars returns the variables DNF would substitute on this host under root.
func repoVars(root string) map[string]string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686",
		"riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x", "loong64": "loongarch64"}[runtime.GOARCH]
	vars := map[string]string{"arch": arch, "basearch": arch}
	if arch == "i686" {
		vars["basearch"] = "i386"
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc", "os-release")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VERSION_ID="); ok {
				vars["releasever"] = strings.Trim(v, `"'`)
			}
		}
	}
	// DNF's own variable files override what we guessed.
	for _, dir := range []string{"etc/dnf/vars", "etc/yum/vars"} {
		ents, _ := os.ReadDir(filepath.Join(root, dir))
		for _, e := range ents {
			if b, err := os.ReadFile(filepath.Join(root, dir, e.Name())); err == nil && e.Type().IsRegular() {
				vars[e.Name()] = strings.TrimSpace(string(b))
			}
		}
	}
	return vars
}

// configuredSources returns the enabled repositories of root/etc/yum.repos.d. A repository
// with only a metalink or mirrorlist has no baseurl and is left out: resolving mirrors is
// DNF's job, and the plugin passes DNF's metadata instead.
func configuredSources(root string) ([]*source, error) {
	dir := filepath.Join(root, "etc", "yum.repos.d")
	files, err := filepath.Glob(filepath.Join(dir, "*.repo"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	vars := repoVars(root)
	var out []*source
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		cfgs, err := parseRepoFile(fh, vars)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("repository file %s: %w", f, err)
		}
		for _, c := range cfgs {
			if len(c.BaseURLs) == 0 {
				continue
			}
			s, err := urlSource(c.ID, c.BaseURLs[0])
			if err != nil {
				return nil, fmt.Errorf("repository %s in %s: %w", c.ID, f, err)
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// urlSource makes a source of a baseurl. A file:// path is a host path even with a root
// prefix, as DNF treats it with --installroot.
func urlSource(id, raw string) (*source, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("baseurl %q: %w", raw, err)
	}
	switch u.Scheme {
	case "file":
		return &source{id: id, base: filepath.FromSlash(path.Clean("/" + u.Path))}, nil
	case "http", "https":
		if !strings.HasSuffix(u.Path, "/") {
			u.Path += "/"
		}
		return &source{id: id, base: u.String(), web: true}, nil
	}
	return nil, fmt.Errorf("baseurl %q: scheme %q not supported (file, http, https)", raw, u.Scheme)
}
