package health

import (
	"os/exec"
	"runtime"
	"sync"
)

// The kernel sends a child's Pdeathsig when the *thread* that forked it ends, not
// when the process does. The Go runtime ends a thread whenever a goroutine that
// locked it returns, which the engine's ptrace tracer does after every operation;
// a check forked from such a thread would be killed mid-run and fail a healthy
// patch. So every check is started from one thread that is locked and never ends.
var (
	spawnOnce sync.Once
	spawns    = make(chan func())
)

// startOnSpawner runs cmd.Start on the helper's long-lived spawner thread.
func startOnSpawner(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for f := range spawns {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	spawns <- func() { errc <- cmd.Start() }
	return <-errc
}
