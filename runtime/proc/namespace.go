package proc

import (
	"bytes"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// Namespace tells where a process runs, for showing it to an operator.
type Namespace struct {
	// MntNS is the inode number of the process's mount namespace (/proc/PID/ns/mnt), as
	// `lsns` and `readlink /proc/PID/ns/mnt` show it.
	MntNS uint64
	// Container is the container id that the process's cgroup path carries, the
	// 64-hex-digit id that docker, podman, containerd and CRI-O put there
	// ("/docker/<id>", "docker-<id>.scope", "libpod-<id>.scope", ...); "" when there is
	// none (a bare namespace made with unshare has none, and none is guessed).
	Container string
}

// NamespaceOf returns the mount namespace and container of pid.
func NamespaceOf(pid int) (Namespace, error) {
	var ns Namespace
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/mnt", &st); err != nil {
		return ns, fmt.Errorf("mount namespace of pid %d: %w", pid, err)
	}
	ns.MntNS = st.Ino
	var b [4096]byte
	if data, err := readSmall("/proc/"+strconv.Itoa(pid)+"/cgroup", b[:]); err == nil {
		ns.Container = ContainerID(data)
	}
	return ns, nil
}

// ContainerID returns the last run of exactly 64 hex digits in the text of a
// /proc/PID/cgroup file, "" if there is none.
func ContainerID(cgroup []byte) string {
	id := ""
	run := 0
	for i := 0; i <= len(cgroup); i++ {
		if i < len(cgroup) && isHex(cgroup[i]) {
			run++
			continue
		}
		if run == 64 {
			id = string(cgroup[i-64 : i])
		}
		run = 0
	}
	return id
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

// InnerIDs returns the thread-group id and the thread id of thread tid as the
// innermost pid namespace of the thread numbers them (the last values of NStgid and
// NSpid in /proc/TID/status): what the thread itself gets from getpid and gettid, and
// so what code running inside it must pass to tgkill. Outside any nested pid
// namespace they are the caller's ids.
func InnerIDs(tid int) (tgid, id int, err error) {
	var b [2048]byte
	data, err := readSmall("/proc/"+strconv.Itoa(tid)+"/status", b[:])
	if err != nil {
		return 0, 0, fmt.Errorf("pid namespace ids of thread %d: %w", tid, err)
	}
	tgid, okG := lastOfLine(data, "\nNStgid:")
	id, okP := lastOfLine(data, "\nNSpid:")
	if !okG || !okP {
		return 0, 0, fmt.Errorf("pid namespace ids of thread %d: %w", tid, ErrMalformed)
	}
	return tgid, id, nil
}

// lastOfLine returns the last number on the line that starts with key.
func lastOfLine(data []byte, key string) (int, bool) {
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return 0, false
	}
	line := data[i+len(key):]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	f := bytes.Fields(line)
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.Atoi(string(f[len(f)-1]))
	return v, err == nil
}
