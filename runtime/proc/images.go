package proc

import (
	"bytes"
	"sync"
)

// Image is an ELF file mapped by a process, found by its GNU build-id.
type Image struct {
	Pid int
	// Path is the file as the process's maps show it, that is relative to the process's
	// own root: in another mount namespace (a container) it may name nothing, or another
	// file, on the host. It is for display and for matching mappings of the same
	// process; open the file through File.
	Path string
	// Mapping is the image's mapping of file offset 0 at the lowest address (its ELF
	// header, and the load base).
	Mapping Mapping
}

// File returns the /proc/PID/map_files path of the exact file mapped.
func (im Image) File() string { return MappedFile(im.Pid, im.Mapping) }

// devIno is a file as /proc/PID/maps names it.
type devIno struct{ dev, ino uint64 }

// ProcessesWithBuildID returns, for every process but the caller, the first mapped
// file whose build-id is id: the same binary whatever its path, mount namespace or
// copy (a container's own copy of a host binary is found too). Processes that exit
// during the scan, kernel threads and zombies are skipped.
func ProcessesWithBuildID(id []byte) ([]Image, error) { return defaultBuildIDs.Processes(id) }

// Processes is ProcessesWithBuildID with this cache. Each distinct file is checked once
// per scan (its identity is re-read then, so a file changed since the last scan is read
// again), and maps files are read in parallel, one worker per CPU.
func (c *BuildIDs) Processes(id []byte) ([]Image, error) {
	pids, err := Pids()
	if err != nil {
		return nil, err
	}
	if len(id) == 0 {
		return nil, nil
	}
	// seen answers, for this scan, whether a file (as maps names it) has the build-id:
	// one fstat per file and scan instead of one per mapping.
	var seenMu sync.Mutex
	seen := map[devIno]bool{}
	match := func(pid int, m Mapping) bool {
		k := devIno{m.Dev, m.Inode}
		seenMu.Lock()
		v, ok := seen[k]
		seenMu.Unlock()
		if ok {
			return v
		}
		got, err := c.Mapped(pid, m)
		if err != nil {
			// Unmapped meanwhile, or not a file we may open: ask again in the next process.
			return false
		}
		v = bytes.Equal(got, id)
		seenMu.Lock()
		seen[k] = v
		seenMu.Unlock()
		return v
	}
	return scanMaps(pids, func(pid int, data []byte) (Image, bool) {
		return firstImage(pid, data, match)
	}), nil
}

// ImageIn returns the first file in maps (of process pid) whose build-id is id.
func (c *BuildIDs) ImageIn(pid int, maps []Mapping, id []byte) (Image, bool) {
	if len(id) == 0 {
		return Image{}, false
	}
	checked := map[devIno]bool{}
	for _, m := range maps {
		k := devIno{m.Dev, m.Inode}
		if m.Offset != 0 || m.Inode == 0 || checked[k] {
			continue
		}
		checked[k] = true
		if got, err := c.Mapped(pid, m); err == nil && bytes.Equal(got, id) {
			return Image{Pid: pid, Path: m.Path, Mapping: m}, true
		}
	}
	return Image{}, false
}

// ImageIn is BuildIDs.ImageIn with the package's shared cache.
func ImageIn(pid int, maps []Mapping, id []byte) (Image, bool) {
	return defaultBuildIDs.ImageIn(pid, maps, id)
}

// FileBuildID returns the build-id of the file at path (a trusted host path), through
// the package's shared cache.
func FileBuildID(path string) ([]byte, error) { return defaultBuildIDs.File(path) }

// firstImage returns the first mapping of file offset 0 in maps text for which match
// says yes. Mappings are in address order, so the first offset-0 mapping of a file is
// its load base. Only offset-0 lines are parsed in full.
func firstImage(pid int, data []byte, match func(int, Mapping) bool) (Image, bool) {
	var last devIno
	for len(data) > 0 {
		var line []byte
		line, data = nextLine(data)
		if !offsetZero(line) {
			continue
		}
		m, ok := parseMapsLine(line)
		if !ok || m.Inode == 0 {
			continue
		}
		k := devIno{m.Dev, m.Inode}
		if k == last {
			continue
		}
		last = k
		if match(pid, m) {
			return Image{Pid: pid, Path: m.Path, Mapping: m}, true
		}
	}
	return Image{}, false
}

// offsetZero tells whether a maps line's offset column is zero, without parsing the rest.
func offsetZero(line []byte) bool {
	// "start-end perms offset ..."
	j := indexByte(line, ' ')
	if j < 0 {
		return false
	}
	rest := line[j+1:]
	if j = indexByte(rest, ' '); j < 0 {
		return false
	}
	rest = rest[j+1:]
	v, _, ok := hexField(rest, ' ')
	return ok && v == 0
}

// ProcessesOfFile returns every process but the caller that maps the file at path or a
// copy of it: a file with the same GNU build-id, whatever its path or mount namespace.
// A file without a build-id is matched by device and inode only, as ProcessesMapping
// does.
func ProcessesOfFile(path string) ([]int, error) {
	id, err := FileBuildID(path)
	if err != nil {
		return nil, err
	}
	if len(id) == 0 {
		dev, ino, err := FileID(path)
		if err != nil {
			return nil, err
		}
		return ProcessesMapping(dev, ino)
	}
	ims, err := ProcessesWithBuildID(id)
	if err != nil {
		return nil, err
	}
	pids := make([]int, len(ims))
	for i, im := range ims {
		pids[i] = im.Pid
	}
	return pids, nil
}

// ExeBuildID returns the build-id of the executable of pid, read through /proc/PID/exe,
// through the package's shared cache.
func ExeBuildID(pid int) ([]byte, error) { return defaultBuildIDs.Exe(pid) }
