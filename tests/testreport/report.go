package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// testRun is what the report keeps of one test.
type testRun struct {
	pkg, name string
	elapsed   time.Duration
	result    string
}

// report reads events and prints as they come what a person needs to see.
type report struct {
	w      io.Writer
	output map[string][]string // pending output per package/test, dropped when it passes
	tests  []testRun
	failed bool
}

func newReport(w io.Writer) *report {
	return &report{w: w, output: map[string][]string{}}
}

func key(pkg, test string) string { return pkg + "\x00" + test }

// read consumes a stream. Lines that are not JSON (go's own messages on stderr, such
// as downloads or a broken go.mod) are printed as they are.
func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(r.w, "%s\n", line)
			continue
		}
		r.event(e)
	}
	return sc.Err()
}

func (r *report) event(e event) {
	k := key(e.Package, e.Test)
	switch e.Action {
	case "output", "build-output":
		r.output[k] = append(r.output[k], e.Output)
	case "pass":
		if e.Test == "" {
			fmt.Fprintf(r.w, "ok   %s %.1fs\n", e.Package, e.Elapsed)
		} else {
			r.add(e, "pass")
		}
		delete(r.output, k)
	case "skip":
		if e.Test == "" {
			fmt.Fprintf(r.w, "ok   %s %.1fs (no test files)\n", e.Package, e.Elapsed)
		} else {
			r.add(e, "skip")
			fmt.Fprintf(r.w, "SKIP %s %s: %s\n", e.Package, e.Test, skipReason(r.output[k]))
		}
		delete(r.output, k)
	case "fail", "build-fail":
		r.failed = true
		if e.Test != "" {
			r.add(e, "fail")
		}
		for _, l := range r.output[k] {
			// go test's own verdict lines; the one below says the same.
			if e.Test == "" && goVerdict.MatchString(l) {
				continue
			}
			io.WriteString(r.w, l)
		}
		if e.Test == "" && e.Action == "fail" {
			fmt.Fprintf(r.w, "FAIL %s %.1fs\n", e.Package, e.Elapsed)
		}
		delete(r.output, k)
	}
}

func (r *report) add(e event, result string) {
	r.tests = append(r.tests, testRun{pkg: e.Package, name: e.Test, result: result,
		elapsed: time.Duration(e.Elapsed * float64(time.Second))})
}

// goVerdict is a package's last lines in go test's own output ("FAIL", "ok pkg 1.2s").
var goVerdict = regexp.MustCompile(`^(PASS|FAIL|ok)(\s|$)`)

// goLine is the file:line prefix testing puts before a logged message.
var goLine = regexp.MustCompile(`^[\w.-]+\.go:\d+: `)

// skipReason finds the message of t.Skip in a skipped test's output: the lines after
// the file:line prefix, without go test's own RUN/SKIP lines.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		msg = append(msg, goLine.ReplaceAllString(t, ""))
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	return strings.Join(msg, " / ")
}

// printSlowest prints the n slowest top-level tests (a subtest's time is in its
// parent's), skipped ones left out.
func (r *report) printSlowest(w io.Writer, n int) {
	var top []testRun
	for _, t := range r.tests {
		if !strings.Contains(t.name, "/") && t.result != "skip" {
			top = append(top, t)
		}
	}
	sort.SliceStable(top, func(i, j int) bool { return top[i].elapsed > top[j].elapsed })
	if len(top) > n {
		top = top[:n]
	}
	if len(top) == 0 {
		return
	}
	fmt.Fprintf(w, "slowest %d tests:\n", len(top))
	bw := bufio.NewWriter(w)
	for _, t := range top {
		fmt.Fprintf(bw, "  %8.1fs  %-4s %s %s\n", t.elapsed.Seconds(), t.result, strings.TrimPrefix(t.pkg, "github.com/syscare/syscare/"), t.name)
	}
	bw.Flush()
}
