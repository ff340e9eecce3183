// Command guest runs inside the qemu guest of tests/kbuild: for each livepatch module
// in its directory (named after the /proc file the patch changes, NAME.ko patches
// /proc/NAME) it reads the file, loads the module with runtime/kpatch, reads it again,
// disables and unloads the patch and reads it a third time, printing one
// "KPTEST {json}" line per step for the host test to assert on.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/syscare/syscare/runtime/kpatch"
)

// Step is one result line; the host decodes the same fields.
type Step struct {
	Module string `json:"module"`
	Step   string `json:"step"`
	Err    string `json:"err,omitempty"`
	Text   string `json:"text"`
}

func report(module, step string, err error, text string) {
	s := Step{Module: module, Step: step, Text: text}
	if err != nil {
		s.Err = err.Error()
	}
	b, _ := json.Marshal(s)
	fmt.Printf("KPTEST %s\n", b)
}

func read(file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(b))
}

func main() {
	dir := os.Args[1]
	mods, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	sort.Strings(mods)
	ctx := context.Background()
	p := kpatch.New()
	p.Timeout = 60 * time.Second
	rel, err := p.KernelRelease()
	report("", "release", err, rel)
	for _, ko := range mods {
		base := strings.TrimSuffix(filepath.Base(ko), ".ko")
		file := "/proc/" + base
		report(base, "before", nil, read(file))
		mi, err := p.Load(ctx, ko)
		report(base, "load", err, read(file))
		if err != nil {
			continue
		}
		st, err := p.Status(mi.Name)
		report(base, "state", err, st.State.String())
		err = p.Disable(ctx, mi.Name)
		report(base, "disable", err, read(file))
		err = p.Unload(ctx, mi.Name)
		report(base, "unload", err, read(file))
	}
	fmt.Println("KPTEST done")
}
