package ptrace

import "github.com/syscare/syscare/runtime/proc"

// innerIDs returns the ids the stub's tgkill must name to reach thread tid of process
// pid: the ids of the thread's own pid namespace. A process in a container has other
// pids inside than the tracer sees; with the tracer's ids the notification would go to
// no thread (or to another process of the container) and the tracer would wait for it
// forever. When /proc cannot tell, the tracer's ids are the best guess.
func innerIDs(pid, tid int) (int, int) {
	g, t, err := proc.InnerIDs(tid)
	if err != nil {
		return pid, tid
	}
	return g, t
}
