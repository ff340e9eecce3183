package upatch

import "github.com/syscare/syscare/runtime/proc"

// copyOf finds, in a process that does not map the file at path itself, a copy of it:
// a mapped file with the same GNU build-id, as a container runs from its own image (its
// own inode, at a path relative to its own root). The copy is read through
// /proc/PID/map_files only, never through the path the container shows; the build-id
// check of prepare then runs on that same mapped file.
func copyOf(pid int, maps []proc.Mapping, path string) (*target, bool) {
	id, err := proc.FileBuildID(path)
	if err != nil || len(id) == 0 {
		return nil, false
	}
	im, ok := proc.ImageIn(pid, maps, id)
	if !ok {
		return nil, false
	}
	t := &target{path: im.Path, file: im.File(), bias: im.Mapping.Start, dev: im.Mapping.Dev, inode: im.Mapping.Inode}
	for _, m := range maps {
		if m.Dev != im.Mapping.Dev || m.Inode != im.Mapping.Inode {
			continue
		}
		if t.lo == 0 || m.Start < t.lo {
			t.lo = m.Start
		}
		t.hi = max(t.hi, m.End)
	}
	return t, true
}
