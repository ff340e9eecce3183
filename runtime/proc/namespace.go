package proc

import (
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
