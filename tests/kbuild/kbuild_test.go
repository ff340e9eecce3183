package kbuild

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/kernel/qemuboot"
)

// syscareBuild builds the syscare-build command once per test binary.
func syscareBuild(t *testing.T) string {
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

func runBuild(t *testing.T, bin string, args ...string) buildResult {
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

// TestLoadavgPatchUnderQemu builds a patch of loadavg_proc_show from the kernel RPMs
// with syscare-build, takes the module out of the patch RPM and boots Debian's kernel
// with it: /proc/loadavg shows the old line, the fixed one once the module is loaded
// (patch enabled), and the old one again after disable and unload.
func TestLoadavgPatchUnderQemu(t *testing.T) {
	needE2E(t)
	in := Prepare(t)
	bin := syscareBuild(t)
	fix, _ := filepath.Abs("testdata/loadavg.patch")
	r := runBuild(t, bin, "--patch-name", "HP001", "--source", in.SRPM, "--debuginfo", in.Debuginfo,
		"--patch", fix, "--kernel-cache", treeCache(in))
	t.Logf("syscare-build took %v (exit %d):\n%s", r.took.Round(time.Millisecond), r.code, r.out)
	if r.code != 0 || r.rpm == "" {
		t.Fatalf("syscare-build failed")
	}
	for _, w := range []string{"changed: loadavg_proc_show", "livepatch relocations", "config from the source RPM's tree"} {
		if !strings.Contains(r.out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	// The RPM: requires the exact kernel, holds the module and a kernel patch.json.
	req := qemuboot.Run(t, "", nil, "rpm", "-qp", "--requires", r.rpm)
	if !strings.Contains(req, "kernel = "+in.Version+"-"+in.Release) {
		t.Errorf("patch RPM requires %q, want kernel = %s-%s", req, in.Version, in.Release)
	}
	root := t.TempDir()
	qemuboot.Run(t, root, nil, "sh", "-c", "rpm2cpio "+r.rpm+" | cpio -idm --quiet")
	metas, _ := filepath.Glob(filepath.Join(root, "usr/lib/syscare/patches/*/patch.json"))
	if len(metas) != 1 {
		t.Fatalf("patch RPM holds %d patch.json", len(metas))
	}
	f, _ := os.Open(metas[0])
	meta, err := patchmeta.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if meta.Kind != patchmeta.KindKernel || len(meta.Entities) != 1 || meta.Entities[0].Functions[0].Name != "loadavg_proc_show" {
		t.Fatalf("patch.json: %+v", meta)
	}
	ko := filepath.Join(filepath.Dir(metas[0]), meta.Entities[0].File)
	st, err := os.Stat(ko)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("module %s: %d bytes", meta.Entities[0].File, st.Size())

	work := t.TempDir()
	guest := filepath.Join(work, "guest")
	qemuboot.Run(t, ".", []string{"CGO_ENABLED=0"}, "go", "build", "-o", guest, "./guest")
	cpio := qemuboot.Initramfs(t, work, guest, map[string]string{"loadavg.ko": ko})
	out := qemuboot.Boot(t, in.Vmlinuz, cpio, 5*time.Minute, "")
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
	const mark = "syscare-live-patched"
	for _, c := range []struct {
		step    string
		patched bool
	}{{"before", false}, {"load", true}, {"disable", false}, {"unload", false}} {
		s, ok := steps["loadavg/"+c.step]
		switch {
		case !ok:
			t.Errorf("step %s not reported", c.step)
		case s.Err != "":
			t.Errorf("step %s: %s", c.step, s.Err)
		case strings.HasSuffix(s.Text, mark) != c.patched || strings.HasPrefix(s.Text, "error"):
			t.Errorf("step %s: /proc/loadavg %q, patched %v expected", c.step, s.Text, c.patched)
		}
	}
	if s := steps["loadavg/state"]; s.Text != "enabled" {
		t.Errorf("state after load: %q %s", s.Text, s.Err)
	}
}

// guestStep is a line of tests/kbuild/guest.
type guestStep struct {
	Module string `json:"module"`
	Step   string `json:"step"`
	Err    string `json:"err"`
	Text   string `json:"text"`
}
