package main

import "runtime"

// oneProcessor runs the Go scheduler with a single processor (GOMAXPROCS=1) when
// the tool works on one process. Its work there is system calls and waits on that
// process, on the tracer thread and two or three goroutines reading files; with
// more processors, each handoff between them also wakes an idle thread that spins
// looking for work before it sleeps again. On the 2-CPU test machine that cost
// about 3 ms of CPU per run (a tenth of the tool's), more than the parallel reads
// gained. A batch (several pids, --all) keeps the default: its workers patch
// processes side by side.
func oneProcessor(pids []int, all bool) {
	if len(pids) == 1 && !all {
		runtime.GOMAXPROCS(1)
	}
}
