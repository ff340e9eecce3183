package watch

import (
	"bytes"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	procfs "github.com/syscare/syscare/runtime/proc"
)

// Copies of a watched file.
//
// A container runs its own copy of a binary: the same bytes, so the same GNU build-id, in
// another inode, at a path that means something only inside its mount namespace. A
// uprobe is per inode, so each copy needs a probe of its own. Copies are found two
// ways: at AddWithCopies, among the files that running processes map (through
// /proc/PID/map_files, by build-id); and later, for executables, by the exec
// notifications of the proc connector (a discovery socket next to the eBPF backend),
// whose process's /proc/PID/exe is checked the same way. Either way the file is opened
// only through those kernel links, which name the very file mapped or executed: no path
// that a container's user can plant is ever resolved. The probe is attached through a
// /proc/self/fd link of a descriptor held during the attach, and the kernel then holds
// the inode itself.

// fileID is a file's identity.
type fileID struct{ dev, ino uint64 }

// addRunningCopies probes the copies of t mapped by running processes. w.mu is held.
func (w *Watcher) addRunningCopies(t *target) {
	ims, err := procfs.ProcessesWithBuildID(t.buildID)
	if err != nil {
		return
	}
	for _, im := range ims {
		w.addCopyLocked(t, im.File())
	}
}

// addCopyLocked probes the file behind link (a /proc magic link) as a copy of t, unless
// it is a file already watched. It returns the copy's target, or nil and the target that
// watches the file already (nil if none). w.mu is held.
func (w *Watcher) addCopyLocked(t *target, link string) (*target, *target) {
	fd, err := unix.Open(link, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, nil
	}
	if x := w.watcherOfLocked(fileID{st.Dev, st.Ino}); x != nil {
		return nil, x
	}
	// The descriptor's own link reopens this inode, whatever its path says now.
	file := "/proc/self/fd/" + strconv.Itoa(fd)
	pp, err := findProbePoint(file)
	if err != nil || pp.kind != t.probe.kind {
		return nil, nil
	}
	w.nextID++
	c := &target{id: w.nextID, path: t.path, probe: pp, dev: st.Dev, ino: st.Ino, file: file}
	if err := w.be.attach(c); err != nil {
		return nil, nil
	}
	c.file = "" // the descriptor closes on return; the probe holds the inode
	t.copies[fileID{st.Dev, st.Ino}] = c
	w.byID[c.id] = c
	return c, nil
}

// watchedLocked tells whether a file is watched already (as a target or as a copy): a
// second probe on one inode would stop its processes twice.
func (w *Watcher) watchedLocked(id fileID) bool { return w.watcherOfLocked(id) != nil }

// watcherOfLocked returns the target (or copy) that watches a file, or nil.
func (w *Watcher) watcherOfLocked(id fileID) *target {
	for _, t := range w.byID {
		if t.dev == id.dev && t.ino == id.ino {
			return t
		}
	}
	return nil
}

// discovery reads exec notifications and hands each new process to onExec; be is nil
// when the proc-connector backend does it.
type discovery struct {
	be   *procConnBackend
	done chan struct{}
}

// startDiscovery starts the discovery socket once. w.mu is held. Without it (no proc
// connector) only the copies found at AddWithCopies are watched. In proc-connector mode
// the backend's own socket does it, on the goroutine that matches the same exec, so
// that a copy found at an exec is not matched, and reported, a second time.
func (w *Watcher) startDiscovery() {
	if w.discovery != nil {
		return
	}
	if pc, ok := w.be.(*procConnBackend); ok {
		pc.setOnExec(w.discoverExec)
		w.discovery = &discovery{}
		return
	}
	be, err := newProcConnBackend()
	if err != nil {
		return
	}
	d := &discovery{be: be, done: make(chan struct{})}
	be.setOnExec(w.discoverExec)
	w.discovery = d
	go func() {
		defer close(d.done)
		be.run(w)
	}()
}

// stopDiscovery stops exec discovery and waits until it delivers nothing more (Close).
func (w *Watcher) stopDiscovery() {
	w.mu.Lock()
	w.idleDiscoveryLocked()
	if w.discovery != nil {
		w.stopLocked(w.discovery)
	}
	stopping := w.stopping
	w.stopping = nil
	w.mu.Unlock()
	for _, d := range stopping {
		<-d.done
	}
}

// idleDiscoveryLocked stops exec discovery when no watched file has copies to find (after
// Remove): every exec on the host costs it a look at the process. w.mu is held.
func (w *Watcher) idleDiscoveryLocked() {
	if w.discovery == nil {
		return
	}
	for _, t := range w.byPath {
		if len(t.buildID) > 0 {
			return
		}
	}
	w.stopLocked(w.discovery)
}

// stopLocked stops d without waiting for it (its reader may be delivering a process,
// which needs w.mu). w.mu is held.
func (w *Watcher) stopLocked(d *discovery) {
	if w.discovery == d {
		w.discovery = nil
	}
	if d.be == nil {
		if pc, ok := w.be.(*procConnBackend); ok {
			pc.setOnExec(nil)
		}
		return
	}
	d.be.stop()
	live := w.stopping[:0]
	for _, s := range w.stopping {
		select {
		case <-s.done:
		default:
			live = append(live, s)
		}
	}
	w.stopping = append(live, d)
}

// discoverExec checks a process that just executed a program: if the program is an
// unwatched copy of a watched executable, the copy gets its probe and the process is
// stopped and reported now (late: it has run since the exec, as in proc-connector mode).
// On overlayfs the executed inode is not the mapped one, so the check of exe above does
// not see that the mapped file is watched already: then the copy's probe reports the
// process (it was attached before the process started), or, in proc-connector mode,
// this exec does.
func (w *Watcher) discoverExec(pid int, noticed int64) bool {
	exe := "/proc/" + strconv.Itoa(pid) + "/exe"
	var st unix.Stat_t
	if unix.Stat(exe, &st) != nil {
		return false
	}
	w.mu.Lock()
	if w.closed || w.watchedLocked(fileID{st.Dev, st.Ino}) {
		// A watched file: its probe (or the backend's own match) reports the process.
		w.mu.Unlock()
		return false
	}
	var want []*target
	for _, t := range w.byPath {
		if len(t.buildID) > 0 && t.probe.kind == kindExecutable {
			want = append(want, t)
		}
	}
	w.mu.Unlock()
	if len(want) == 0 {
		return false
	}
	id, err := procfs.ExeBuildID(pid)
	if err != nil || len(id) == 0 {
		return false
	}
	for _, t := range want {
		if !bytes.Equal(id, t.buildID) {
			continue
		}
		// The probe goes on the file the process maps, which is not always the one it
		// executed: on overlayfs (container images) exe is the overlay's inode and the
		// mapping the underlying layer's, and only the latter's probe ever fires.
		maps, err := procfs.Maps(pid)
		if err != nil {
			return false
		}
		im, ok := procfs.ImageIn(pid, maps, id)
		if !ok {
			return false
		}
		w.mu.Lock()
		var c, known *target
		if w.byPath[t.path] == t && !w.closed {
			c, known = w.addCopyLocked(t, im.File())
		}
		w.mu.Unlock()
		if c == nil {
			if _, noProbes := w.be.(*procConnBackend); known != nil && noProbes {
				w.deliver(pid, known.id, false, noticed)
				return true
			}
			return false
		}
		w.deliver(pid, c.id, false, noticed)
		return true
	}
	return false
}

// Copies returns how many copies of the file at path are probed (for tests and
// diagnostics).
func (w *Watcher) Copies(path string) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.byPath[path]
	if t == nil {
		return 0, fmt.Errorf("copies of %s: not watched", path)
	}
	return len(t.copies), nil
}
