package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/rpmbuild/builder"
	"github.com/syscare/syscare/rpmbuild/internal/testpkg"
	"github.com/syscare/syscare/tests/termtest"
)

var steps = []string{"prepare", "build original", "build patched", "diff", "cross-check", "link"}

// TestJSONProgress: --json writes only JSON lines: each step's start and end, progress
// events with the objects compiled during the builds, and a last result.
func TestJSONProgress(t *testing.T) {
	pkg := testpkg.Build(t, "scdemo")
	r := runBuilder(t, nil, "--patch-name", "JS1", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fixturePatch(t, "fix-vendor.patch"), "--output", t.TempDir(), "--dry-run", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	var events []builder.Event
	var last result
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	for i, l := range lines {
		if i == len(lines)-1 {
			if err := json.Unmarshal([]byte(l), &last); err != nil {
				t.Fatalf("last line %q: %v", l, err)
			}
			continue
		}
		var e builder.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %d %q is not an event: %v", i, l, err)
		}
		events = append(events, e)
	}
	if last.Event != "result" || !last.OK || !last.DryRun {
		t.Errorf("result %+v", last)
	}
	seen := map[string]string{}
	maxObjects := 0
	rebuilt := ""
	for _, e := range events {
		seen[e.Step] += e.Type[:1]
		if e.Type == "progress" && e.Step == "build original" && e.Objects > maxObjects {
			maxObjects = e.Objects
		}
		if e.Step == "build patched" && e.Type == "done" {
			rebuilt = e.Detail
		}
	}
	// The patched build knows its total once it has applied the patches and found the
	// changed units: from then on every progress event of it says "done of total" with
	// the total the step ends with ("N of M objects rebuilt"). A tick before that (the
	// step's first 250 ms, which a loaded machine can spend applying the patches) says
	// only the time: no total, nothing compiled, and never after a counted event.
	patchedEvents, counted := 0, false
	for _, e := range events {
		if e.Step != "build patched" || e.Type != "progress" {
			continue
		}
		if e.Total == 0 && e.Objects == 0 && !counted {
			continue
		}
		patchedEvents++
		counted = true
		if e.Total == 0 || e.Objects > e.Total || !strings.HasPrefix(rebuilt, strconv.Itoa(e.Total)+" of ") {
			t.Errorf("build patched progress %+v, step done with %q", e, rebuilt)
		}
	}
	if patchedEvents == 0 {
		t.Errorf("build patched (%s) sent no progress event counting its objects", rebuilt)
	}
	for _, s := range steps {
		if v := seen[s]; !strings.HasPrefix(v, "s") || !strings.HasSuffix(v, "d") {
			t.Errorf("step %q: events %q, want start ... done", s, v)
		}
	}
	if seen["package"] != "s" { // "skipped" with --dry-run
		t.Errorf("package: events %q, want skipped", seen["package"])
	}
	// scdemo's original build compiles 10 translation units (its program, library,
	// vendored code and tests); the last progress event may come before the last one.
	if maxObjects < 5 || maxObjects > 10 {
		t.Errorf("build original: at most %d objects reported compiled, want 5..10", maxObjects)
	}
	if !strings.Contains(r.stderr, "Patch report for /usr/bin/scdemo") {
		t.Errorf("the report is not on stderr:\n%s", r.stderr)
	}
}

// TestLiveProgressInTmux runs a build in a terminal (tmux) and watches the screen: the
// running step shows on a live line with its elapsed time, and every step ends as its
// plain final line. Piped, the output has no terminal control sequences.
func TestLiveProgressInTmux(t *testing.T) {
	termtest.Need(t)
	pkg := testpkg.Build(t, "scdemo")
	dir := t.TempDir()
	cmdline := strings.Join([]string{builderBin, "--patch-name", "TM1", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fixturePatch(t, "fix-vendor.patch"), "--output", dir, "--dry-run"}, " ")
	var live []string
	screen, _ := termtest.Run(t, cmdline, 150, 40, 5*time.Minute, func(screen string) {
		for _, l := range strings.Split(screen, "\n") {
			if strings.Contains(l, " ... ") {
				live = append(live, strings.TrimSpace(l))
			}
		}
	})
	if !strings.Contains(screen, "EXIT=0") {
		t.Fatalf("build did not end well:\n%s", screen)
	}
	t.Logf("live lines seen: %q", live)
	sawSeconds := false
	for _, l := range live {
		if strings.HasPrefix(l, "build original ... ") && strings.HasSuffix(strings.Split(l, ",")[0], "s") {
			sawSeconds = true
		}
	}
	if !sawSeconds {
		t.Errorf("no live line with the elapsed time of build original; screens showed %q", live)
	}
	for _, s := range steps {
		if !strings.Contains(screen, s) {
			t.Errorf("final screen lacks step %q:\n%s", s, screen)
		}
	}
	if strings.Contains(screen, " ... ") {
		t.Errorf("a live line was left on the final screen:\n%s", screen)
	}

	r := runBuilder(t, nil, "--patch-name", "TM2", "--source", pkg.SRPM, "--debuginfo", pkg.Debuginfo,
		"--patch", fixturePatch(t, "fix-vendor.patch"), "--output", dir, "--dry-run")
	if strings.ContainsAny(r.stdout, "\r\033") {
		t.Errorf("piped output has terminal control characters: %q", r.stdout)
	}
}
