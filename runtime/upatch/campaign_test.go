package upatch

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/proc"
	"github.com/syscare/syscare/runtime/ptrace"
	"github.com/syscare/syscare/tests/testenv"
)

// The kill campaign: upatch-manage patches and unpatches an 8-thread process
// and is killed with SIGKILL at a random instant, either anywhere in its run
// or while it holds the process (from the moment the process shows it as its
// tracer). After each kill the process must be alive, untraced, running, and
// have the patch entirely in or entirely out: the code bytes of the ten
// replaced functions, the header the process holds and the program's own
// answer agree. `make test` runs a few dozen trials; `make soak` runs
// SYSCARE_SOAK_TRIALS (500) and prints the counts.

// campaignTarget is the running target and what original and patched look like.
type campaignTarget struct {
	v     *victim
	funcs []uint64 // addresses of f0..f9 (the target is not PIE)
	orig  [][]byte // their first 5 bytes, unpatched
}

func startCampaignTarget(t *testing.T, bin string, funcs []uint64) *campaignTarget {
	c := &campaignTarget{v: start(t, bin, nil), funcs: funcs}
	st := c.read()
	if st.err != nil {
		t.Fatal(st.err)
	}
	c.orig = st.code
	return c
}

type targetState struct {
	code    [][]byte
	err     error
	patched int // functions starting with a jmp
	same    int // functions with their original bytes
}

func (c *campaignTarget) read() targetState {
	var st targetState
	r := ptrace.Remote{Pid: c.v.pid()}
	for _, a := range c.funcs {
		b := make([]byte, jmpRel32)
		if err := r.ReadMem(a, b); err != nil {
			st.err = err
			return st
		}
		st.code = append(st.code, b)
	}
	for i, b := range st.code {
		switch {
		case c.orig != nil && bytes.Equal(b, c.orig[i]):
			st.same++
		case b[0] == 0xe9:
			st.patched++
		}
	}
	return st
}

// funcAddrs returns the addresses of f0..f9 in bin.
func funcAddrs(t *testing.T, bin string) []uint64 {
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{}
	for i := 0; i < 10; i++ {
		want[fmt.Sprintf("f%d", i)] = i
	}
	out := make([]uint64, 10)
	for _, s := range syms {
		if i, ok := want[s.Name]; ok {
			out[i] = s.Value
		}
	}
	for i, a := range out {
		if a == 0 {
			t.Fatalf("f%d not found in %s", i, bin)
		}
	}
	return out
}

// taskStates returns, per thread, its state letter and tracer pid.
func taskStates(pid int) (map[int]string, error) {
	tids, err := proc.Threads(pid)
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, tid := range tids {
		st, err := proc.ThreadState(pid, tid)
		if err != nil {
			continue // exited meanwhile
		}
		tp, _ := proc.TracerPid(tid)
		out[tid] = fmt.Sprintf("%c/%d", st, tp)
	}
	return out, nil
}

// campaignCounts are the outcomes of a campaign.
type campaignCounts struct {
	trials, deaths, stuck, half int
	killedHolding, killedRun    int // where the kill was aimed
	finished                    int // the tool ended before the kill
	traced                      int // the target showed a tracer right before the kill
	pending                     int // a pending patch was left (the next run rolls it back)
	patched, original           int // state found after the trials
	notes                       []string
}

func (k *campaignCounts) String() string {
	return fmt.Sprintf("%d trials: %d deaths / %d stuck / %d half-patched (kills aimed while holding the target %d, anywhere in the run %d; target traced at the kill %d; tool done before its kill %d; pending patch left and rolled back later %d; found patched %d, original %d)",
		k.trials, k.deaths, k.stuck, k.half, k.killedHolding, k.killedRun, k.traced, k.finished, k.pending, k.patched, k.original)
}

func (k *campaignCounts) note(format string, args ...any) {
	if len(k.notes) < 20 {
		k.notes = append(k.notes, fmt.Sprintf(format, args...))
	}
}

// check looks at the target after a kill and returns whether it is patched;
// bad outcomes are counted. A dead target is started again.
func (k *campaignCounts) check(t *testing.T, c **campaignTarget, bin string, funcs []uint64, trial int) bool {
	v := (*c).v
	pid := v.pid()
	restart := func() bool {
		*c = startCampaignTarget(t, bin, funcs)
		return false
	}
	if gone(pid) {
		k.deaths++
		_ = v.cmd.Wait()
		k.note("trial %d: target died: %v", trial, v.cmd.ProcessState)
		return restart()
	}
	// Untraced and running: detaching is done when the tool's death has been
	// reported, but a woken thread may take a moment to be scheduled (seconds on a
	// loaded machine: the bound only tells a stuck thread from a slow one).
	var states map[int]string
	ok := false
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		var err error
		if states, err = taskStates(pid); err != nil {
			break
		}
		ok = len(states) == 8
		for _, s := range states {
			if !strings.HasSuffix(s, "/0") || s[0] == 't' || s[0] == 'T' {
				ok = false
			}
		}
		if ok {
			break
		}
	}
	if !ok {
		if gone(pid) {
			k.deaths++
			_ = v.cmd.Wait()
			k.note("trial %d: target died: %v", trial, v.cmd.ProcessState)
			return restart()
		}
		k.stuck++
		k.note("trial %d: threads (state/tracer) %v", trial, states)
		v.cmd.Process.Kill()
		_ = v.cmd.Wait()
		return restart()
	}
	st := (*c).read()
	hs, herr := NewEngine("/").Info(pid)
	if maps, err := proc.Maps(pid); err == nil {
		if all, err := readHeaders(ptrace.Remote{Pid: pid}, maps); err == nil && len(all) > len(hs) {
			k.pending++
		}
	}
	line, lerr := v.ask("check\n", 30*time.Second) // a hang guard, not a speed test
	switch {
	case lerr != nil && gone(pid):
		k.deaths++
		_ = v.cmd.Wait()
		k.note("trial %d: target died after the check: %v", trial, v.cmd.ProcessState)
		return restart()
	case lerr != nil:
		k.stuck++
		k.note("trial %d: target does not answer: %v%s", trial, lerr, taskDump(pid))
		v.cmd.Process.Kill()
		_ = v.cmd.Wait()
		return restart()
	}
	patched := st.patched == len(funcs)
	consistent := st.err == nil && herr == nil && (st.same == len(funcs) || patched)
	wantLine, wantHeaders := "sum=55", 0
	if patched {
		wantLine, wantHeaders = "sum=1055", 1
	}
	if consistent && (line != wantLine || len(hs) != wantHeaders) {
		consistent = false
	}
	if !consistent {
		k.half++
		k.note("trial %d: code %x (read error %v), %d patch headers (%v), program says %q", trial, st.code, st.err, len(hs), herr, line)
		v.cmd.Process.Kill()
		_ = v.cmd.Wait()
		return restart()
	}
	return patched
}

// ask writes q to v and returns the next output line.
func (v *victim) ask(q string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	v.mu.Lock()
	defer v.mu.Unlock()
	seen := len(v.lines)
	v.mu.Unlock()
	_, err := v.stdin.Write([]byte(q))
	v.mu.Lock()
	if err != nil {
		return "", err
	}
	timer := time.AfterFunc(timeout, func() { v.mu.Lock(); v.cond.Broadcast(); v.mu.Unlock() })
	defer timer.Stop()
	for {
		if seen < len(v.lines) {
			return v.lines[seen], nil
		}
		if seen > len(v.lines) {
			seen = len(v.lines)
		}
		if v.done {
			return "", fmt.Errorf("output closed")
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no output within %v", timeout)
		}
		v.cond.Wait()
	}
}

// toolRun is one run of upatch-manage.
type toolRun struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

func startTool(t *testing.T, tool string, args ...string) *toolRun {
	r := &toolRun{cmd: exec.Command(tool, args...)}
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return r
}

// calibrate runs whole patch/unpatch cycles and returns the median run time
// and the longest freeze the tool reported.
func calibrate(t *testing.T, tool, pid, obj, uuid string) (time.Duration, time.Duration) {
	var runs []time.Duration
	var freeze time.Duration
	for i := 0; i < 4; i++ {
		for _, args := range [][]string{
			{"patch", "--pid", pid, "--patch", obj, "--uuid", uuid, "--json", "--retries", "10"},
			{"unpatch", "--pid", pid, "--uuid", uuid, "--json", "--retries", "10"},
		} {
			t0 := time.Now()
			r := startTool(t, tool, args...)
			if err := r.cmd.Wait(); err != nil {
				t.Fatalf("upatch-manage %s: %v\n%s", args[0], err, r.out.String())
			}
			runs = append(runs, time.Since(t0))
			var res struct {
				FreezeUS int64 `json:"freeze_us"`
			}
			for _, l := range strings.Split(r.out.String(), "\n") {
				if json.Unmarshal([]byte(l), &res) == nil {
					freeze = max(freeze, time.Duration(res.FreezeUS)*time.Microsecond)
				}
			}
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i] < runs[j] })
	return runs[len(runs)/2], freeze
}

// busyWait waits d precisely (a sleep may take far longer on a loaded machine).
func busyWait(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

func TestKillCampaignUpatchManage(t *testing.T) {
	trials := testenv.SoakTrials("SYSCARE_SOAK_TRIALS", 40)
	dir := t.TempDir()
	// SYSCARE_CAMPAIGN_TOOL runs the campaign against another build (an older
	// one, to see what the campaign catches).
	tool := os.Getenv("SYSCARE_CAMPAIGN_TOOL")
	if tool == "" {
		tool = filepath.Join(dir, "upatch-manage")
		_, file, _, _ := runtime.Caller(0)
		if out, err := exec.Command("go", "build", "-o", tool, filepath.Join(filepath.Dir(file), "..", "cmd", "upatch-manage")).CombinedOutput(); err != nil {
			t.Fatalf("build upatch-manage: %v\n%s", err, out)
		}
	}
	testenv.SoakLoad(t)
	bin := filepath.Join(dir, "campaign_target")
	gcc(t, "-O2", "-no-pie", "-pthread", testdata("campaign_target.c"), "-o", bin)
	objPath, _ := buildPatch(t, "bench_fix.c", bin, "")
	funcs := funcAddrs(t, bin)
	c := startCampaignTarget(t, bin, funcs)
	const uuid = "campaign-0001"
	total, hold := calibrate(t, tool, strconv.Itoa(c.v.pid()), objPath, uuid)
	hold = max(hold*3/2, time.Millisecond)
	t.Logf("calibration: a tool run takes %v, it holds the target up to %v", total, hold)

	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var k campaignCounts
	patched := false
	for i := 0; i < trials; i++ {
		pid := strconv.Itoa(c.v.pid())
		patchArgs := []string{"patch", "--pid", pid, "--patch", objPath, "--uuid", uuid, "--retries", "10"}
		unpatchArgs := []string{"unpatch", "--pid", pid, "--uuid", uuid, "--retries", "10"}
		// Patch in two trials of four, unpatch in the others: bring the
		// target to the state the operation starts from first.
		wantPatched := i%4 >= 2
		if patched != wantPatched {
			setup := patchArgs
			if patched {
				setup = unpatchArgs
			}
			if r := startTool(t, tool, setup...); r.cmd.Wait() != nil {
				t.Fatalf("upatch-manage %s: %s", setup[0], r.out.String())
			}
			patched = wantPatched
		}
		args := patchArgs
		if patched {
			args = unpatchArgs
		}
		r := startTool(t, tool, args...)
		if i%2 == 0 {
			// Anywhere in the run, start-up and exit included.
			k.killedRun++
			busyWait(time.Duration(rng.Int63n(int64(total))))
		} else {
			// While it holds the target: from when the target shows a tracer.
			k.killedHolding++
			for end := time.Now().Add(2 * total); time.Now().Before(end); {
				if tp, err := proc.TracerPid(c.v.pid()); err == nil && tp != 0 {
					break
				}
			}
			busyWait(time.Duration(rng.Int63n(int64(hold))))
		}
		held := false
		if tp, err := proc.TracerPid(c.v.pid()); err == nil && tp != 0 {
			k.traced++
			held = true
		}
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		err := r.cmd.Wait()
		if held {
			// A thread may be finishing injected work the tool started (at
			// most the stub's final wait, 250 ms, on a starved machine):
			// look at the state it settles in.
			time.Sleep(300 * time.Millisecond)
		}
		if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && !ws.Signaled() {
			k.finished++
			if err != nil && !strings.Contains(r.out.String(), "busy") {
				k.note("trial %d: upatch-manage %s: %v: %s", i, args[0], err, strings.TrimSpace(r.out.String()))
			}
		}
		k.trials++
		patched = k.check(t, &c, bin, funcs, i)
		if patched {
			k.patched++
		} else {
			k.original++
		}
	}
	fmt.Printf("campaign upatch-manage: %v\n", &k)
	for _, n := range k.notes {
		t.Log(n)
	}
	if k.deaths+k.stuck+k.half > 0 {
		t.Errorf("campaign: %v", &k)
	}
}

// taskDump describes every thread of pid: state, wait channel, system call.
func taskDump(pid int) string {
	tids, _ := proc.Threads(pid)
	var b strings.Builder
	for _, tid := range tids {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/wchan", pid, tid))
		sc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/syscall", pid, tid))
		st := ""
		if f := strings.Fields(string(stat)); len(f) > 3 {
			st = f[2]
		}
		fmt.Fprintf(&b, "\n  thread %d: %s wchan %s syscall %s", tid, st, wchan, strings.TrimSpace(string(sc)))
	}
	if out, err := exec.Command("eu-stack", "-p", strconv.Itoa(pid)).CombinedOutput(); err == nil || len(out) > 0 {
		b.Write(out)
	}
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	b.Write(maps)
	return b.String()
}
