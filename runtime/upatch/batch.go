package upatch

import (
	"runtime"
	"sync"

	"github.com/syscare/syscare/runtime/ptrace"
)

// Running one operation over many processes, several at a time.

func (e *Engine) batch(pids []int, progress func(done, total int, r Result), op func(*ptrace.Tracer, int) (Stats, error)) []Result {
	res := make([]Result, len(pids))
	var mu sync.Mutex
	done := 0
	workers := min(runtime.GOMAXPROCS(0)*2, len(pids))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := e.tracer()
			defer e.release(t)
			for i := range next {
				st, err := op(t, pids[i])
				res[i] = Result{Pid: pids[i], Err: err, Stats: st}
				if progress != nil {
					mu.Lock()
					done++
					progress(done, len(pids), res[i])
					mu.Unlock()
				}
			}
		}()
	}
	for i := range pids {
		next <- i
	}
	close(next)
	wg.Wait()
	return res
}
