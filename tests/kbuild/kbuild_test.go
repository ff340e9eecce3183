package kbuild

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/kernel/qemuboot"
)

// syscareBuild builds the syscare-build command once per test binary.
func syscareBuild(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "syscare-build")
	qemuboot.Run(t, "../..", nil, "go", "build", "-o", bin, "./rpmbuild/cmd/syscare-build")
	return bin
}

// buildResult is one syscare-build run.
type buildResult struct {
	code     int
	out      string
	took     time.Duration
	outDir   string
	rpm      string
	workBase string
}

func runBuild(t testing.TB, bin string, args ...string) buildResult {
	t.Helper()
	r := buildResult{outDir: t.TempDir(), workBase: t.TempDir()}
	args = append(args, "--output", r.outDir, "--workdir", r.workBase, "--jobs", "2")
	cmd := exec.Command(bin, args...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	r.took, r.out = time.Since(start), string(out)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("syscare-build: %v", err)
	}
	m, _ := filepath.Glob(filepath.Join(r.outDir, "patch-*.x86_64.rpm"))
	if len(m) == 1 {
		r.rpm = m[0]
	}
	return r
}

// treeCache is where the tests keep prepared kernel trees (shared with rpmbuild/kernel's tests).
func treeCache(in *Inputs) string { return filepath.Join(in.Cache, "trees") }

// kernelCase is one fix the end-to-end test builds and applies in the guest.
type kernelCase struct {
	name  string // the module's file name in the guest: PROC--NAME.ko
	proc  string // the /proc file whose text the fix changes
	patch string // testdata/<patch>.patch
	// funcs are the replaced functions patch.json must list ("name" or "name@pos").
	funcs []string
	// patched tells the fixed text from the original.
	patched func(text string) bool
	// out are substrings of syscare-build's output.
	out []string
	// prereq is a shipped module (path under lib/modules/<abi>/kernel) the guest loads
	// before the patch.
	prereq string
	// helper: the patch is also installed in the guest as its RPM lays it out and
	// driven through the helper's manager (apply, deactive, active, remove; then
	// apply, accept, and a helper started as on a new boot brings it back).
	helper bool
	// testmod: the fix is to the out-of-tree module testdata/testmod, given as a
	// second --source; the guest loads the module as its package ships it first.
	testmod bool
}

var kernelCases = []kernelCase{
	{name: "a", proc: "loadavg", patch: "loadavg", funcs: []string{"loadavg_proc_show"}, helper: true,
		patched: func(s string) bool { return strings.HasSuffix(s, " syscare-live-patched") },
		out:     []string{"changed: loadavg_proc_show", "livepatch relocations", "config from the source RPM's tree"}},
	// c_start is a static function of consoles.c with two same-named twins in
	// proc.c: the module must name the right one (its kallsyms position).
	{name: "b", proc: "consoles", patch: "sympos", funcs: []string{"c_start@"},
		patched: func(s string) bool { return s == "" },
		out:     []string{"changed: c_start"}},
	// A new function calling nr_processes, which the kernel does not export: reached
	// through a .klp.rela relocation.
	{name: "c", proc: "loadavg", patch: "newfunc", funcs: []string{"loadavg_proc_show"},
		patched: func(s string) bool { return regexp.MustCompile(` processes=[1-9][0-9]*$`).MatchString(s) },
		// Case a compiled the original loadavg.o already: the tree cache has it.
		out: []string{"changed: loadavg_proc_show", "syscare_nr_processes", "build original (fs/proc/loadavg.o cached)"}},
	// A function of the in-tree module binfmt_misc, which the guest loads first; the
	// fix reads the module's static variable "enabled".
	{name: "d", proc: "binfmt", patch: "module", funcs: []string{"bm_status_read"}, prereq: "fs/binfmt_misc.ko",
		patched: func(s string) bool { return s == "enabled (syscare-live-patched)" },
		out:     []string{"changed: bm_status_read", "Patch report for binfmt_misc"}},
	// A function with table entries: meminfo_proc_show has two .altinstructions
	// entries (static_cpu_has: a replacement that jumps back into it, and
	// .altinstr_aux code), and the fix adds a WARN_ON_ONCE (a __bug_table entry): the
	// module carries them; the line the fix adds shows the replacement runs.
	{name: "f", proc: "meminfo", patch: "meminfo", funcs: []string{"meminfo_proc_show"},
		patched: func(s string) bool { return strings.HasSuffix(s, "\nSyscareLivePatched: yes") },
		out:     []string{"changed: meminfo_proc_show"}},
	// A function of an out-of-tree module built from its own source RPM.
	{name: "e", proc: "syscare_testmod", patch: "outoftree", funcs: []string{"testmod_show"}, testmod: true,
		patched: func(s string) bool { return s == "testmod syscare-live-patched" },
		out:     []string{"changed: testmod_show", "Patch report for testmod", "testmod:testmod.o"}},
}

// TestKernelPatchE2E builds each case's patch from the kernel RPMs with
// syscare-build, takes the module out of the patch RPM and boots Debian's kernel with
// them: the /proc file shows the old text, the fixed one once the module is loaded
// (patch enabled), and the old one again after disable and unload.
func TestKernelPatchE2E(t *testing.T) {
	needE2E(t)
	in := Prepare(t)
	bin := syscareBuild(t)
	modules := map[string]string{}
	var helperCase kernelCase
	for _, c := range kernelCases {
		fix, _ := filepath.Abs("testdata/" + c.patch + ".patch")
		args := []string{"--patch-name", "HP_" + c.name, "--source", in.SRPM, "--debuginfo", in.Debuginfo,
			"--patch", fix, "--kernel-cache", treeCache(in)}
		requires := "kernel = " + in.Version + "-" + in.Release
		if c.testmod {
			srpm, shipped := in.TestmodSRPM(t)
			args = append(args, "--source", srpm)
			modules["prereq--testmod.ko"] = shipped
			requires = "testmod = 1-1"
		}
		r := runBuild(t, bin, args...)
		t.Logf("case %s: syscare-build took %v (exit %d):\n%s", c.name, r.took.Round(time.Millisecond), r.code, r.out)
		if r.code != 0 || r.rpm == "" {
			t.Fatalf("case %s: syscare-build failed", c.name)
		}
		for _, w := range c.out {
			if !strings.Contains(r.out, w) {
				t.Errorf("case %s: output lacks %q", c.name, w)
			}
		}
		// The RPM: requires the exact kernel, holds the module and a kernel patch.json.
		req := qemuboot.Run(t, "", nil, "rpm", "-qp", "--requires", r.rpm)
		if !strings.Contains(req, requires) {
			t.Errorf("case %s: patch RPM requires %q, want %s", c.name, req, requires)
		}
		root := t.TempDir()
		qemuboot.Run(t, root, nil, "sh", "-c", "rpm2cpio "+r.rpm+" | cpio -idm --quiet")
		metas, _ := filepath.Glob(filepath.Join(root, "usr/lib/syscare/patches/*/patch.json"))
		if len(metas) != 1 {
			t.Fatalf("case %s: patch RPM holds %d patch.json", c.name, len(metas))
		}
		f, _ := os.Open(metas[0])
		meta, err := patchmeta.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		var funcs []string
		for _, fn := range meta.Entities[0].Functions {
			if fn.Pos != 0 {
				funcs = append(funcs, fmt.Sprintf("%s@%d", fn.Name, fn.Pos))
			} else {
				funcs = append(funcs, fn.Name)
			}
		}
		// "name@" stands for name at a nonzero position (one of same-named twins).
		same := len(funcs) == len(c.funcs)
		for i := 0; same && i < len(funcs); i++ {
			if w := c.funcs[i]; strings.HasSuffix(w, "@") {
				same = strings.HasPrefix(funcs[i], w) && funcs[i] != w+"0"
			} else {
				same = funcs[i] == w
			}
		}
		if meta.Kind != patchmeta.KindKernel || len(meta.Entities) != 1 || !same {
			t.Fatalf("case %s: patch.json kind %s, functions %v, want %v", c.name, meta.Kind, funcs, c.funcs)
		}
		ko := filepath.Join(filepath.Dir(metas[0]), meta.Entities[0].File)
		st, err := os.Stat(ko)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("case %s: module %s: %d bytes", c.name, meta.Entities[0].File, st.Size())
		modules[c.proc+"--"+c.name+".ko"] = ko
		if c.helper {
			dir := filepath.Dir(metas[0])
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				modules[filepath.Join("/usr/lib/syscare/patches", meta.UUID, e.Name())] = filepath.Join(dir, e.Name())
			}
			hf := filepath.Join(t.TempDir(), "helper")
			os.WriteFile(hf, []byte(meta.UUID+" "+c.proc+"\n"), 0o644)
			modules["helper"] = hf
			helperCase = c
		}
		if c.prereq != "" {
			modules["prereq--"+strings.TrimSuffix(filepath.Base(c.prereq), ".ko")+".ko"] = in.Module(t, c.prereq)
		}
	}

	work := t.TempDir()
	guest := filepath.Join(work, "guest")
	qemuboot.Run(t, ".", []string{"CGO_ENABLED=0"}, "go", "build", "-o", guest, "./guest")
	cpio := qemuboot.Initramfs(t, work, guest, modules)
	out := qemuboot.Boot(t, in.Vmlinuz, cpio, 10*time.Minute, "")
	os.WriteFile(filepath.Join(work, "console.log"), out, 0o644)
	steps := map[string]guestStep{}
	done := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "KPTEST ")
		if !ok {
			continue
		}
		t.Log(sc.Text())
		if rest == "done" {
			done = true
			continue
		}
		var s guestStep
		if json.Unmarshal([]byte(rest), &s) == nil {
			steps[s.Module+"/"+s.Step] = s
		}
	}
	if !done {
		t.Fatalf("guest did not finish; console:\n%s", out)
	}
	if s := steps["/release"]; s.Text != in.ABI {
		t.Errorf("guest runs %q, want %s", s.Text, in.ABI)
	}
	for _, c := range kernelCases {
		mod := c.proc + "--" + c.name
		for _, st := range []struct {
			step    string
			patched bool
		}{{"before", false}, {"load", true}, {"disable", false}, {"unload", false}} {
			s, ok := steps[mod+"/"+st.step]
			switch {
			case !ok:
				t.Errorf("case %s: step %s not reported", c.name, st.step)
			case s.Err != "":
				t.Errorf("case %s: step %s: %s", c.name, st.step, s.Err)
			case c.patched(s.Text) != st.patched || strings.HasPrefix(s.Text, "error"):
				t.Errorf("case %s: step %s: /proc/%s %q, patched %v expected", c.name, st.step, c.proc, s.Text, st.patched)
			}
		}
		if s := steps[mod+"/state"]; s.Text != "enabled" {
			t.Errorf("case %s: state after load: %q %s", c.name, s.Text, s.Err)
		}
	}
	// The helper's manager: installed patch, checked against the running kernel
	// (release and vmlinux build-id), applied, deactivated, activated, removed.
	checkManagerSteps(t, steps, "helper", helperCase, []managerStep{
		{"start", "", false}, {"apply", "ACTIVED", true}, {"deactive", "DEACTIVED", false}, {"active", "ACTIVED", true}, {"remove", "NOT-APPLIED", false}})
	// An ACCEPTED kernel patch comes back by itself when the helper starts on a new
	// boot (the livepatch gone from the kernel, the state file of an earlier boot).
	checkManagerSteps(t, steps, "boot", helperCase, []managerStep{
		{"apply", "ACTIVED", true}, {"accept", "ACCEPTED", true}, {"reboot", "", false}, {"restart", "ACCEPTED", true}, {"remove", "NOT-APPLIED", false}})
}

// managerStep is what one guest step of the manager must report: the entity's state
// ("" for a step that reports only the /proc text) and whether the text is the fixed one.
type managerStep struct {
	step, state string
	patched     bool
}

// checkManagerSteps checks the guest's "STATE: TEXT" lines of the steps of group.
func checkManagerSteps(t *testing.T, steps map[string]guestStep, group string, c kernelCase, want []managerStep) {
	t.Helper()
	for _, st := range want {
		s, ok := steps[group+"/"+st.step]
		state, text, _ := strings.Cut(s.Text, ": ")
		if st.state == "" {
			text = s.Text
		}
		switch {
		case !ok:
			t.Errorf("%s: step %s not reported", group, st.step)
		case s.Err != "":
			t.Errorf("%s: %s: %s", group, st.step, s.Err)
		case st.state != "" && state != st.state:
			t.Errorf("%s: %s: state %q, want %s", group, st.step, state, st.state)
		case c.patched(text) != st.patched:
			t.Errorf("%s: %s: /proc/%s %q, patched %v expected", group, st.step, c.proc, text, st.patched)
		}
	}
}

// guestStep is a line of tests/kbuild/guest.
type guestStep struct {
	Module string `json:"module"`
	Step   string `json:"step"`
	Err    string `json:"err"`
	Text   string `json:"text"`
}
