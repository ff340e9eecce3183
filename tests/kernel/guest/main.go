// Command guest runs inside the qemu guest of tests/kernel: it drives runtime/kpatch
// against the real kernel and prints one "KPTEST {json}" line per step for the host
// test to assert on.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/syscare/syscare/runtime/kpatch"
	"golang.org/x/sys/unix"
)

// Step is one result line; the host decodes the same fields.
type Step struct {
	Step   string `json:"step"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "pause" {
		// The stalled-transition test's sleeper: sits in pause(2) until killed.
		for {
			unix.Pause()
		}
	}
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		os.Exit(1)
	}
}

type reporter struct {
	w      io.Writer
	failed int
}

func (r *reporter) report(step string, ok bool, format string, a ...any) bool {
	b, _ := json.Marshal(Step{Step: step, OK: ok, Detail: fmt.Sprintf(format, a...)})
	fmt.Fprintf(r.w, "KPTEST %s\n", b)
	if !ok {
		r.failed++
	}
	return ok
}

func cmdline() string {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(b))
}

func state(p *kpatch.Patcher, name string) kpatch.State {
	st, err := p.Status(name)
	if err != nil {
		return -1
	}
	return st.State
}

// run expects the module directory as its argument: livepatch-cmdline.ko,
// livepatch-cmdline-v2.ko (another build of it), livepatch-pause.ko and
// other-release.ko (the first built for another release).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 {
		return errors.New("usage: guest <module dir>")
	}
	dir := args[0]
	r := &reporter{w: stdout}
	p := kpatch.New()
	p.Timeout = 30 * time.Second
	rel, err := p.KernelRelease()
	r.report("release", err == nil, "%s", rel)

	const patched = "syscare kpatch: live patched"
	const cmd = "livepatch_cmdline"
	before := cmdline()
	r.report("cmdline-before", before != patched, "%s", before)

	t := time.Now()
	mi, err := p.Load(ctx, filepath.Join(dir, "livepatch-cmdline.ko"))
	if r.report("load", err == nil && mi.Name == cmd, "%v in %v", err, time.Since(t).Round(time.Millisecond)) {
		r.report("load-state", state(p, cmd) == kpatch.Enabled, "%v", state(p, cmd))
		got := cmdline()
		r.report("cmdline-patched", got == patched, "%s", got)
		list, err := kpatch.New().List()
		r.report("list", err == nil && len(list) == 1 && list[0] == kpatch.Status{Name: cmd, State: kpatch.Enabled}, "%v %v", list, err)
		_, err = p.Load(ctx, filepath.Join(dir, "livepatch-cmdline-v2.ko"))
		got = cmdline()
		r.report("other-build", errors.Is(err, kpatch.ErrOtherModule) && got == patched, "%v: %s", err, got)
	}

	t = time.Now()
	err = p.Disable(ctx, cmd)
	r.report("disable", err == nil, "%v in %v", err, time.Since(t).Round(time.Millisecond))
	r.report("disable-state", state(p, cmd) == kpatch.Loaded, "%v", state(p, cmd))
	got := cmdline()
	r.report("cmdline-disabled", got == before, "%s", got)
	err = p.Enable(ctx, cmd)
	r.report("enable-freed", errors.Is(err, kpatch.ErrNeedsReload), "%v", err)

	_, err = p.Load(ctx, filepath.Join(dir, "livepatch-cmdline.ko"))
	got = cmdline()
	r.report("reload", err == nil && got == patched && state(p, cmd) == kpatch.Enabled, "%v: %s", err, got)

	t = time.Now()
	err = p.Unload(ctx, cmd)
	r.report("unload", err == nil, "%v in %v", err, time.Since(t).Round(time.Millisecond))
	_, serr := os.Stat("/sys/module/" + cmd)
	r.report("unload-state", state(p, cmd) == kpatch.Unloaded && errors.Is(serr, os.ErrNotExist), "%v, /sys/module: %v", state(p, cmd), serr)
	got = cmdline()
	r.report("cmdline-unloaded", got == before, "%s", got)

	_, err = p.Load(ctx, filepath.Join(dir, "other-release.ko"))
	r.report("other-release", errors.Is(err, kpatch.ErrReleaseMismatch) && state(p, cmd) == kpatch.Unloaded, "%v", err)

	stallSteps(ctx, r, p, dir)

	fmt.Fprintf(stdout, "KPTEST done failed=%d\n", r.failed)
	return nil
}

// stallSteps loads the pause(2) patch while a task sleeps in pause(): the transition
// cannot finish, so Load must time out, name that task, reverse and unload.
func stallSteps(ctx context.Context, r *reporter, p *kpatch.Patcher, dir string) {
	const name = "livepatch_pause"
	self, err := os.Executable()
	if err != nil {
		r.report("stall-sleeper", false, "%v", err)
		return
	}
	sleeper := exec.Command(self, "pause")
	if err := sleeper.Start(); err != nil {
		r.report("stall-sleeper", false, "%v", err)
		return
	}
	pid := sleeper.Process.Pid
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	// Wait until a thread of the sleeper is inside pause (x86-64 syscall 34).
	inPause := false
	for i := 0; i < 3000 && !inPause; i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
		for _, f := range tasks {
			if b, _ := os.ReadFile(f); strings.HasPrefix(string(b), "34 ") {
				inPause = true
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !r.report("stall-sleeper", inPause, "pid %d in pause: %v", pid, inPause) {
		return
	}

	// Short enough to stay below the kernel's own fake-signal nudge (after 15 s), which
	// would wake the sleeper and let the transition finish; the reversal gets longer
	// because TCG on a loaded machine is slow.
	p.Timeout = 3 * time.Second
	p.RevertTimeout = 30 * time.Second
	t := time.Now()
	_, err = p.Load(ctx, filepath.Join(dir, "livepatch-pause.ko"))
	var te *kpatch.TransitionError
	named := false
	if errors.As(err, &te) {
		for _, task := range te.Tasks {
			named = named || task.Pid == pid
		}
	}
	r.report("stall-timeout", errors.Is(err, kpatch.ErrTransitionTimeout) && named && te != nil && te.Reverted,
		"sleeper pid %d; %v (after %v)", pid, err, time.Since(t).Round(time.Millisecond))
	r.report("stall-state", state(p, name) == kpatch.Unloaded, "%v", state(p, name))

	// Once the sleeper is gone the same patch goes in.
	sleeper.Process.Kill()
	sleeper.Wait()
	p.Timeout = 30 * time.Second
	_, err = p.Load(ctx, filepath.Join(dir, "livepatch-pause.ko"))
	r.report("stall-retry", err == nil && state(p, name) == kpatch.Enabled, "%v", err)
	err = p.Unload(ctx, name)
	r.report("stall-unload", err == nil && state(p, name) == kpatch.Unloaded, "%v", err)
}
