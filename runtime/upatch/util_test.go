package upatch

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/proc"
)

func itoa(i int) string { return strconv.Itoa(i) }

func sscan(line string, bump, counter *int) (int, error) {
	var g, w, tl int
	return fmt.Sscanf(line, "greet=%d work=%d tls=%d counter=%d bump=%d", &g, &w, &tl, counter, bump)
}

func threadCount(t testing.TB, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func containsAll(have []int, want ...int) bool {
	set := map[int]bool{}
	for _, p := range have {
		set[p] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}

// patchMappings counts anonymous r-x mappings that hold a patch header.
func patchMappings(t testing.TB, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 5 && f[1] == "r-xp" && f[4] == "0" {
			n++
		}
	}
	return n
}

// settleBound bounds the waits below for a target to reach a state it reaches in
// milliseconds: only a hang meets it, not a loaded machine, where a fixed sleep of
// tens of milliseconds is outrun.
const settleBound = 30 * time.Second

// waitBlockedInRead waits until a thread of pid is blocked in read(2) on a
// descriptor that fd accepts, as /proc/PID/task/TID/syscall shows.
func waitBlockedInRead(t testing.TB, pid int, fd func(int) bool) {
	t.Helper()
	waitBlocked(t, pid, 1, func(nr, arg0 int64) bool { return nr == 0 && fd(int(arg0)) }) // 0: read on x86-64
}

// waitBlocked waits until n threads of pid are blocked in a system call that ok
// accepts (its number and first argument), as /proc/PID/task/TID/syscall shows.
func waitBlocked(t testing.TB, pid, n int, ok func(nr, arg0 int64) bool) {
	t.Helper()
	for end := time.Now().Add(settleBound); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		found := 0
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, task.Name()))
			if err != nil {
				continue
			}
			f := strings.Fields(string(b))
			if len(f) < 2 {
				continue // "running"
			}
			nr, err1 := strconv.ParseInt(f[0], 10, 64)
			arg0, err2 := strconv.ParseInt(f[1], 0, 64)
			if err1 == nil && err2 == nil && ok(nr, arg0) {
				found++
			}
		}
		if found >= n {
			return
		}
	}
	t.Fatalf("pid %d: fewer than %d threads blocked in the system call looked for within %v", pid, n, settleBound)
}

func notStdin(fd int) bool { return fd != 0 }

// waitTraced waits until pid's leader has a tracer: the engine holds the process,
// so what the test does next happens while it is attached, not before.
func waitTraced(t testing.TB, pid int) {
	t.Helper()
	for end := time.Now().Add(settleBound); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if tp, err := proc.TracerPid(pid); err == nil && tp != 0 {
			return
		}
	}
	t.Fatalf("pid %d: no tracer within %v", pid, settleBound)
}
