package watch

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	procfs "github.com/syscare/syscare/runtime/proc"
)

// Modes reported by [Watcher.Mode].
const (
	ModeEBPF          = "ebpf-uprobe"
	ModeProcConnector = "proc-connector"
)

// ModeEnv, when set to [ModeProcConnector] in the environment, makes New skip eBPF. It exists
// so that the fallback can be exercised on machines where eBPF works.
const ModeEnv = "SYSCARE_WATCH_MODE"

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("watcher closed")

// Event reports a process that is in group-stop because it started running a watched file.
type Event struct {
	Pid  int
	Path string // the path given to Add

	// noticed is the CLOCK_MONOTONIC time in ns when the kernel noticed the process (probe
	// hit or exec notification); the benchmarks use it to time the watcher itself.
	noticed int64
}

// target is one watched file.
type target struct {
	id       uint64 // attach cookie; never reused within a Watcher
	path     string
	probe    probePoint
	dev, ino uint64
	// buildID is the file's GNU build-id (nil if it has none): copies of the file with
	// the same build-id, such as a container's, are watched too (see copies.go).
	buildID []byte
	// copies are the probes on such copies, by inode; nil for a copy itself.
	copies map[fileID]*target
	// file, for a copy, is the path its probe is attached through (a descriptor link,
	// valid only during the attach); path stays the parent's, which events report.
	file string
}

// probeFile is the path the probe is attached through.
func (t *target) probeFile() string {
	if t.file != "" {
		return t.file
	}
	return t.path
}

// backend is the mechanism that notices new processes.
type backend interface {
	attach(t *target) error
	detach(t *target) error
	// run reports processes through w.deliver until stop has been called and the events
	// already noticed are delivered, or the backend broke.
	run(w *Watcher)
	stop() error
	close() error
	missedCount() uint64
}

// Watcher stops and reports new processes of the files given to Add. Its methods may be
// called from several goroutines.
type Watcher struct {
	mode     string
	fallback error
	be       backend
	events   chan Event
	done     chan struct{}
	runDone  chan struct{}
	adopting sync.WaitGroup // deliveries of orphans found by Add

	mu      sync.Mutex
	closed  bool
	nextID  uint64
	byPath  map[string]*target
	byID    map[uint64]*target
	pending map[int]int // pid -> pidfd (or -1) of processes reported and not resumed

	// discovery reads exec notifications to find copies of watched files that nothing
	// ran before (copies.go); nil until AddWithCopies needs it, and again once no
	// watched file has copies to find. stopping are those being stopped, which Close
	// waits for.
	discovery *discovery
	stopping  []*discovery
}

type options struct {
	mode     string // "" picks eBPF when it works
	ringSize uint32 // bytes; 0 means defaultRingSize (tests make it small to overflow it)
}

// New returns a Watcher that uses eBPF uprobes when the kernel allows it and the proc
// connector otherwise; Mode tells which, FallbackReason why eBPF was not used.
func New() (*Watcher, error) {
	return newWatcher(options{mode: os.Getenv(ModeEnv)})
}

func newWatcher(o options) (*Watcher, error) {
	w := &Watcher{
		events:  make(chan Event, 64),
		done:    make(chan struct{}),
		runDone: make(chan struct{}),
		byPath:  make(map[string]*target),
		byID:    make(map[uint64]*target),
		pending: make(map[int]int),
	}
	switch o.mode {
	case "", ModeEBPF:
		if o.ringSize == 0 {
			o.ringSize = defaultRingSize
		}
		b, err := newBPFBackend(o.ringSize)
		if err == nil {
			w.be, w.mode = b, ModeEBPF
			break
		}
		if o.mode == ModeEBPF {
			return nil, err
		}
		w.fallback = err
		fallthrough
	case ModeProcConnector:
		p, err := newProcConnBackend()
		if err != nil {
			return nil, errors.Join(w.fallback, err)
		}
		w.be, w.mode = p, ModeProcConnector
		if w.fallback == nil {
			w.fallback = fmt.Errorf("%s=%s", ModeEnv, o.mode)
		}
	default:
		return nil, fmt.Errorf("watch mode %q: %w", o.mode, errors.ErrUnsupported)
	}
	go func() {
		defer close(w.runDone)
		w.be.run(w)
	}()
	return w, nil
}

// Mode returns ModeEBPF or ModeProcConnector.
func (w *Watcher) Mode() string { return w.mode }

// FallbackReason returns why the proc connector is used instead of eBPF (nil in eBPF mode).
// The proc-connector mode races with the process: callers should log this.
func (w *Watcher) FallbackReason() error { return w.fallback }

// Missed returns how many processes ran unstopped because events could not be queued. In
// proc-connector mode it counts socket overflows instead, each of which lost an unknown
// number of exec notifications.
func (w *Watcher) Missed() uint64 { return w.be.missedCount() }

// Events returns the channel of stopped processes; it is closed by Close. Every event must be
// answered with Resume.
func (w *Watcher) Events() <-chan Event { return w.events }

// Add watches the executable or shared library at path: from now on every process that
// starts running it, or loads it, is stopped and reported. Processes that an earlier watcher
// (of a crashed helper) stopped at the same point and never resumed are reported too. Only that file (its inode) is
// watched: a copy elsewhere is not, a hard link is. Adding a path again is a no-op while it
// names the same file, and moves the watch to the new file after the path was replaced (as
// a package update does).
func (w *Watcher) Add(path string) error { return w.add(path, false) }

// AddWithCopies is Add, and also watches every copy of the file: any executable or
// library with the same GNU build-id, at any path and in any mount namespace, as a
// container runs its own copy of a host binary. A copy that a running process maps is
// probed at once; a copy of an executable that nothing runs yet is found when a
// process executes it (exec notifications): that first process is stopped late, as in
// proc-connector mode, and the copy is probed for every later one. A file without a
// build-id is watched as by Add. See copies.go.
func (w *Watcher) AddWithCopies(path string) error { return w.add(path, true) }

func (w *Watcher) add(path string, withCopies bool) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	pp, err := findProbePoint(path)
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	old := w.byPath[path]
	if old != nil && old.dev == st.Dev && old.ino == st.Ino {
		return nil
	}
	for _, t := range w.byPath {
		if t.dev == st.Dev && t.ino == st.Ino {
			// A second probe on the same inode would stop the process twice.
			return fmt.Errorf("watch %s: same file as %s: %w", path, t.path, os.ErrExist)
		}
	}
	w.nextID++
	t := &target{id: w.nextID, path: path, probe: pp, dev: st.Dev, ino: st.Ino, copies: map[fileID]*target{}}
	if withCopies {
		// Without a build-id only the file itself is watched, as by Add.
		t.buildID, _ = procfs.FileBuildID(path)
	}
	if err := w.be.attach(t); err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	w.byPath[path], w.byID[t.id] = t, t
	if len(t.buildID) > 0 {
		w.addRunningCopies(t)
		w.startDiscovery()
	}
	// Processes a crashed predecessor left stopped at this probe are reported like new ones.
	// Scanned after the attach, so that none can fall between the scan and the probe.
	for _, pid := range findOrphans(t) {
		w.adopting.Add(1)
		go func() {
			defer w.adopting.Done()
			w.deliver(pid, t.id, true, 0)
		}()
	}
	if old != nil {
		if err := w.detachAll(old); err != nil {
			return fmt.Errorf("unwatch replaced %s: %w", path, err)
		}
	}
	return nil
}

// detachAll removes t and its copies' probes; w.mu is held.
func (w *Watcher) detachAll(t *target) error {
	var errs []error
	for k, c := range t.copies {
		delete(w.byID, c.id)
		delete(t.copies, k)
		errs = append(errs, w.be.detach(c))
	}
	delete(w.byID, t.id)
	errs = append(errs, w.be.detach(t))
	return errors.Join(errs...)
}

// Remove stops watching path. A process caught at that moment and not reported yet is
// resumed without being reported.
func (w *Watcher) Remove(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	t := w.byPath[path]
	if t == nil {
		return fmt.Errorf("unwatch %s: %w", path, os.ErrNotExist)
	}
	delete(w.byPath, path)
	w.idleDiscoveryLocked()
	if err := w.detachAll(t); err != nil {
		return fmt.Errorf("unwatch %s: %w", path, err)
	}
	return nil
}

// Resume lets a reported process continue (SIGCONT). It signals through a pidfd taken when
// the process was reported, so a recycled pid is never signalled. A process that died while
// stopped yields an error wrapping unix.ESRCH.
func (w *Watcher) Resume(pid int) error {
	w.mu.Lock()
	fd, ok := w.pending[pid]
	delete(w.pending, pid)
	w.mu.Unlock()
	if !ok || fd < 0 {
		if err := unix.Kill(pid, unix.SIGCONT); err != nil {
			return fmt.Errorf("resume pid %d: %w", pid, err)
		}
		return nil
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGCONT, nil, 0); err != nil {
		return fmt.Errorf("resume pid %d: %w", pid, err)
	}
	return nil
}

// Close stops watching, resumes every process reported and not resumed (and those noticed
// but not reported yet), closes the Events channel and releases the kernel objects.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	close(w.done)
	// Links are closed under the lock so that Add cannot race with stop.
	stopErr := w.be.stop()
	w.mu.Unlock()

	<-w.runDone
	w.adopting.Wait()
	closeErr := w.be.close()
	w.stopDiscovery()

	w.mu.Lock()
	for pid, fd := range w.pending {
		// Best effort: the process may be gone, which is fine.
		if fd < 0 {
			_ = unix.Kill(pid, unix.SIGCONT)
		} else {
			_ = unix.PidfdSendSignal(fd, unix.SIGCONT, nil, 0)
			unix.Close(fd)
		}
		delete(w.pending, pid)
	}
	w.mu.Unlock()
	close(w.events)
	return errors.Join(stopErr, closeErr)
}

// deliver handles a process noticed by the backend for target id at CLOCK_MONOTONIC time
// noticed. signalled says the backend already sent SIGSTOP.
func (w *Watcher) deliver(pid int, id uint64, signalled bool, noticed int64) {
	if !signalled {
		// eBPF could not signal it, or the proc connector noticed it: stop it now, late.
		if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
			return // gone already
		}
	}
	w.mu.Lock()
	t := w.byID[id]
	w.mu.Unlock()
	if t == nil {
		// Removed meanwhile: nobody wants it stopped.
		_ = unix.Kill(pid, unix.SIGCONT)
		return
	}
	if err := waitStopped(pid); errors.Is(err, errGone) {
		return // died before it stopped: nothing to patch, nothing to resume
	}
	// Without a pidfd (descriptor limit reached) the process is still reported, and Resume
	// falls back to kill(2): dropping it would leave it stopped for good.
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fd = -1
	}
	w.mu.Lock()
	if old, ok := w.pending[pid]; ok && old >= 0 {
		// The pid was reported before and never resumed, and now runs a watched file again
		// (it died and the pid was reused, or it was resumed by someone else and re-executed).
		unix.Close(old)
	}
	w.pending[pid] = fd
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return // Close resumes it
	}
	select {
	case w.events <- Event{Pid: pid, Path: t.path, noticed: noticed}:
	case <-w.done:
	}
}
