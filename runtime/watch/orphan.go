package watch

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// findOrphans returns the processes that a previous watcher stopped at t's probe and never
// resumed (its owner crashed between the stop and the Resume). They would otherwise stay
// stopped for good: no new probe hit will report them.
//
// A process qualifies when it is in group-stop outside any system call with its program
// counter within one instruction after t's probe point in a mapping of t's file. A process
// stopped by job control or a debugger is practically never exactly there.
func findOrphans(t *target) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if st, err := procState(pid); err != nil || st != 'T' {
			continue
		}
		pc, ok := stoppedPC(pid)
		if !ok {
			continue
		}
		if probe, ok := probeAddress(pid, t); ok && pc >= probe && pc < probe+16 {
			out = append(out, pid)
		}
	}
	return out
}

// stoppedPC reads the program counter of a task that is not inside a system call from
// /proc/PID/syscall ("-1 sp pc").
func stoppedPC(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/syscall")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 3 || f[0] != "-1" {
		return 0, false
	}
	pc, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 64)
	return pc, err == nil
}

// probeAddress returns where t's probe point is mapped in pid ("start-end perms offset
// MAJ:MIN inode path" lines of /proc/PID/maps).
func probeAddress(pid int, t *target) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || !strings.Contains(f[1], "x") {
			continue
		}
		ino, err := strconv.ParseUint(f[4], 10, 64)
		if err != nil || ino != t.ino {
			continue
		}
		maj, minr, ok := strings.Cut(f[3], ":")
		if !ok || hexOr(maj) != uint64(unix.Major(t.dev)) || hexOr(minr) != uint64(unix.Minor(t.dev)) {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, end, off := hexOr(lo), hexOr(hi), hexOr(f[2])
		if t.probe.offset >= off && t.probe.offset-off < end-start {
			return start + t.probe.offset - off, true
		}
	}
	return 0, false
}

func hexOr(s string) uint64 {
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return ^uint64(0)
	}
	return v
}
