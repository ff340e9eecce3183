// Package nsroot runs test processes as a container would: in their own mount and pid
// namespaces, under a private root that holds its own copies of the programs (the host's
// /usr is bind-mounted in read-only for the shared libraries, and /dev as it is). It uses unshare, nsenter
// and pivot_root from util-linux, as root.
package nsroot

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// setupScript builds the root and pivots into it, then execs its arguments as the
// namespace's pid 1. Run by `unshare --mount --pid --fork`.
const setupScript = `set -e
R=$1; shift
mount --make-rprivate /
if [ -n "$NSROOT_LOWER" ]; then
	mount -t overlay overlay -o "lowerdir=$NSROOT_LOWER,upperdir=$NSROOT_UPPER,workdir=$NSROOT_WORK" "$R"
fi
mount --bind "$R" "$R"
mkdir -p "$R/usr" "$R/proc" "$R/dev" "$R/.old"
mount --rbind /dev "$R/dev"
mount --rbind /usr "$R/usr"
mount -o remount,bind,ro "$R/usr"
for d in bin sbin lib lib64; do
	if [ -L "/$d" ]; then ln -sfn "$(readlink "/$d")" "$R/$d"
	elif [ -d "/$d" ]; then mkdir -p "$R/$d"; mount --rbind "/$d" "$R/$d"; fi
done
cd "$R"
pivot_root . .old
mount -t proc proc /proc
umount -l /.old
rmdir /.old
exec "$@"
`

// NS is a mount and pid namespace with a private root; its pid 1 sleeps until the
// test ends, and processes are started in it with Start.
type NS struct {
	// Root is the host directory that is the namespace's "/" (for NewOverlay, the
	// overlay's mount point, which is mounted in the namespace only).
	Root string
	// Init is the host pid of the namespace's pid 1.
	Init  int
	keep  *exec.Cmd
	procs []*exec.Cmd
	seen  map[int]bool // programs already handed out by Start
}

// New makes a namespace whose root holds a copy of each host file in files (path in
// the namespace -> host path), with its mode, as a container image would.
func New(t testing.TB, files map[string]string) *NS { return newNS(t, files, false) }

// NewOverlay is New with the root an overlayfs mount whose lower layer holds the
// files, as container images are mounted: a process's executable (the overlay's inode)
// is then not the file it maps (the layer's inode).
func NewOverlay(t testing.TB, files map[string]string) *NS { return newNS(t, files, true) }

func newNS(t testing.TB, files map[string]string, overlay bool) *NS {
	t.Helper()
	root := t.TempDir()
	layer := root
	var env []string
	if overlay {
		layer = t.TempDir()
		up, work := t.TempDir(), t.TempDir()
		env = []string{"NSROOT_LOWER=" + layer, "NSROOT_UPPER=" + up, "NSROOT_WORK=" + work}
	}
	for in, host := range files {
		CopyFile(t, host, filepath.Join(layer, in))
	}
	script := filepath.Join(t.TempDir(), "nsroot-setup.sh")
	if err := os.WriteFile(script, []byte(setupScript), 0o755); err != nil {
		t.Fatal(err)
	}
	keep := exec.Command("unshare", "--mount", "--pid", "--fork", "--kill-child", "/bin/sh", script, root, "/bin/sleep", "infinity")
	keep.Env = append(os.Environ(), env...)
	var errOut strings.Builder
	keep.Stderr = &errOut
	if err := keep.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	ns := &NS{Root: root, keep: keep, seen: map[int]bool{}}
	t.Cleanup(ns.close)
	// pid 1 of the namespace is unshare's child; it is ready once it runs sleep. The
	// bounds here only guard against a hang (a loaded machine is slow to set up mounts).
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pid := childOf(keep.Process.Pid); pid > 0 {
			if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && strings.HasSuffix(exe, "/sleep") {
				ns.Init = pid
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace did not start: %s", errOut.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return ns
}

// MntNS returns the inode of the namespace's mount namespace.
func (ns *NS) MntNS(t testing.TB) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(ns.Init)+"/ns/mnt", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// Proc is a process started in a namespace.
type Proc struct {
	// Pid is its pid on the host.
	Pid   int
	cmd   *exec.Cmd
	lines chan string
	stdin io.WriteCloser
}

// Printed returns how many lines the process printed that were not read yet.
func (p *Proc) Printed() int { return len(p.lines) }

// CloseStdin closes the process's standard input.
func (p *Proc) CloseStdin() { p.stdin.Close() }

// Output waits for the process to end and returns the lines it printed and nobody read.
func (p *Proc) Output(t testing.TB, d time.Duration) []string {
	t.Helper()
	var out []string
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return out
			}
			out = append(out, l)
		case <-deadline:
			t.Fatalf("pid %d did not end within %v; printed %q", p.Pid, d, out)
		}
	}
}

// Start runs argv (a path inside the namespace) in the namespace and returns once it
// has executed argv[0]; its standard output is read line by line through Lines.
func (ns *NS) Start(t testing.TB, argv ...string) *Proc {
	t.Helper()
	// nsenter forks into the pid namespace and waits, relaying its child's stops to
	// itself (it stays stopped after the child was stopped and continued by someone
	// else, holding the output open). So the program runs as an orphan of a shell that
	// exits at once, and the namespace's pid 1 adopts it.
	args := append([]string{"--target", strconv.Itoa(ns.Init), "--mount", "--pid", "--root", "--wd", "--",
		// An asynchronous command's standard input is /dev/null before its own
		// redirections, so the input goes through descriptor 3.
		"/bin/sh", "-c", `exec 3<&0; "$@" 0<&3 3<&- &`, "sh"}, argv...)
	cmd := exec.Command("nsenter", args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Standard input stays open until Kill or the end of the test, for programs that
	// wait for its end.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("nsenter: %v", err)
	}
	ns.procs = append(ns.procs, cmd)
	p := &Proc{cmd: cmd, lines: make(chan string, 256), stdin: stdin}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			// A full queue drops the line rather than block the program in write(2):
			// tests wait for a line to come, not for every line.
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		io.Copy(io.Discard, out)
	}()
	// The program as the namespace sees it (through its overlay, if any).
	want := fmt.Sprintf("/proc/%d/root%s", ns.Init, argv[0])
	var wantSt unix.Stat_t
	if err := unix.Stat(want, &wantSt); err != nil {
		t.Fatalf("%s is not in the namespace's root: %v", argv[0], err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for p.Pid == 0 {
		for _, pid := range childrenOf(ns.Init) {
			if !ns.seen[pid] && (runs(pid, wantSt) || endedAs(pid, argv[0])) {
				p.Pid = pid
				ns.seen[pid] = true
				break
			}
		}
		if p.Pid == 0 && time.Now().After(deadline) {
			t.Fatalf("%s did not start in the namespace", argv[0])
		}
		time.Sleep(2 * time.Millisecond)
	}
	return p
}

// Line returns the next line the process printed, failing the test after d.
func (p *Proc) Line(t testing.TB, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("pid %d closed its output", p.Pid)
		}
		return l
	case <-time.After(d):
		t.Fatalf("pid %d printed nothing for %v", p.Pid, d)
	}
	return ""
}

// WaitFor reads lines until one contains want, failing the test after d.
func (p *Proc) WaitFor(t testing.TB, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("pid %d never printed %q", p.Pid, want)
		}
		if strings.Contains(p.Line(t, left), want) {
			return
		}
	}
}

// Kill ends the process.
func (p *Proc) Kill() {
	p.stdin.Close()
	unix.Kill(p.Pid, unix.SIGKILL)
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

func (ns *NS) close() {
	// Killing pid 1 of a pid namespace kills every process in it.
	if ns.Init > 0 {
		unix.Kill(ns.Init, unix.SIGKILL)
	}
	ns.keep.Process.Kill()
	ns.keep.Wait()
	for _, c := range ns.procs {
		c.Process.Kill()
		c.Wait()
	}
}

// runs reports whether pid executes the file st describes.
func runs(pid int, want unix.Stat_t) bool {
	var st unix.Stat_t
	return unix.Stat("/proc/"+strconv.Itoa(pid)+"/exe", &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev
}

// endedAs reports whether pid is a zombie whose command name is that of program: a
// short program that nothing stops can run and exit between two polls of Start, and
// the namespace's pid 1 (sleep) never reaps it, but a zombie has no /proc/PID/exe.
// Before its exec the child is still "sh", so the name tells that program ran.
func endedAs(pid int, program string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses, so split at the last ')'.
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || len(s) < end+3 {
		return false
	}
	comm := filepath.Base(program)
	if len(comm) > 15 { // TASK_COMM_LEN - 1
		comm = comm[:15]
	}
	return s[end+2] == 'Z' && s[open+1:end] == comm
}

// childOf returns the first child of pid, 0 if none.
func childOf(pid int) int {
	if c := childrenOf(pid); len(c) > 0 {
		return c[0]
	}
	return 0
}

// childrenOf returns the children of pid (from /proc/PID/task/PID/children).
func childrenOf(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// CopyFile copies host file src to dst (creating its directory), keeping its mode: a
// private copy, another inode with the same bytes and so the same build-id.
func CopyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, st.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}
