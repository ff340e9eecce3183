package kpatch

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/syscare/syscare/runtime/elfsafe"
)

// ErrNotLivepatch is wrapped when a module does not declare itself a live patch
// (MODULE_INFO(livepatch, "Y")) or registers no patch when loaded.
var ErrNotLivepatch = errors.New("not a livepatch module")

// ErrReleaseMismatch is wrapped when a module was built for another kernel release.
var ErrReleaseMismatch = errors.New("module built for another kernel release")

// ModInfo is what a module's .modinfo section says about it.
type ModInfo struct {
	// Name is the module name the kernel registers it under (and the livepatch sysfs
	// directory name).
	Name string
	// VerMagic is the full version magic, e.g. "6.1.0-56-amd64 SMP preempt mod_unload modversions ".
	VerMagic string
	// Livepatch is true when the module carries livepatch=Y.
	Livepatch bool
	// Fields holds every key=value pair; a repeated key keeps its first value.
	Fields map[string]string
	// BuildID is the module's GNU build-id (nil when it has none), which the kernel
	// shows for a loaded module in /sys/module/<name>/notes/.note.gnu.build-id.
	BuildID []byte
}

// Release is the kernel release the module was built for: vermagic's first word.
func (m *ModInfo) Release() string {
	f := strings.Fields(m.VerMagic)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// moduleNameRe is what the kernel accepts as a module name, and what keeps a name safe
// to join into a sysfs path.
var moduleNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,55}$`)

// ParseModInfo decodes the content of a .modinfo section: NUL-separated key=value
// strings. fallbackName (usually from the file name) is used when there is no name=.
func ParseModInfo(data []byte, fallbackName string) (*ModInfo, error) {
	m := &ModInfo{Fields: map[string]string{}}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if len(kv) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		if _, seen := m.Fields[k]; !seen {
			m.Fields[k] = v
		}
	}
	m.VerMagic = m.Fields["vermagic"]
	m.Livepatch = m.Fields["livepatch"] == "Y"
	m.Name = m.Fields["name"]
	if m.Name == "" {
		m.Name = fallbackName
	}
	// The kernel treats '-' and '_' alike in module names and shows '_'.
	m.Name = strings.ReplaceAll(m.Name, "-", "_")
	if !moduleNameRe.MatchString(m.Name) {
		return nil, fmt.Errorf("module name %q is not a valid module name", m.Name)
	}
	if m.Release() == "" {
		return nil, fmt.Errorf("module %s: no vermagic", m.Name)
	}
	return m, nil
}

// ReadModInfo reads the .modinfo section of the kernel module at path.
func ReadModInfo(path string) (*ModInfo, error) {
	f, err := elfsafe.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open module: %w", err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := elfsafe.SectionData(s)
	if err != nil {
		return nil, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	base := strings.TrimSuffix(filepath.Base(path), ".ko")
	m, err := ParseModInfo(data, base)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	if m.BuildID, err = elfsafe.BuildID(f.File); err != nil {
		return nil, fmt.Errorf("module %s: build-id: %w", path, err)
	}
	return m, nil
}
