package upatch

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
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
