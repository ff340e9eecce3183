package main

import (
	"runtime"
	"testing"
)

// One process: one scheduler processor; a batch keeps what it had.
func TestOneProcessor(t *testing.T) {
	prev := runtime.GOMAXPROCS(4)
	defer runtime.GOMAXPROCS(prev)
	oneProcessor([]int{10, 11}, false)
	oneProcessor(nil, true)
	if n := runtime.GOMAXPROCS(0); n != 4 {
		t.Fatalf("GOMAXPROCS %d after batches, want 4 kept", n)
	}
	oneProcessor([]int{10}, false)
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("GOMAXPROCS %d for one process, want 1", n)
	}
}
