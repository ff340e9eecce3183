package kernel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/kernel/qemuboot"
	"github.com/syscare/syscare/tests/testenv"
)

// otherRelease turns the ABI into another one of the same length ("6.1.0-56-amd64"
// gives "6.1.0-99-amd64"), so the module's vermagic can be rewritten in place.
func otherRelease(abi string) string {
	i := strings.IndexByte(abi, '-')
	j := strings.IndexByte(abi[i+1:], '-')
	if i < 0 || j <= 0 {
		return strings.Repeat("9", len(abi))
	}
	num := []byte(abi[i+1 : i+1+j])
	for k := range num {
		if num[k] == '9' {
			num[k] = '8'
		} else {
			num[k] = '9'
		}
	}
	return abi[:i+1] + string(num) + abi[i+1+j:]
}

// step is one line the guest reports (tests/kernel/guest.Step).
type step struct {
	Step   string `json:"step"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

func TestLivepatchUnderQemu(t *testing.T) {
	testenv.NeedE2E(t)
	testenv.NeedRoot(t, "the kernel test installs the kernel headers package")
	for _, c := range []string{"apt-get", "apt-cache", "dpkg-deb", "make", "gcc", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("kernel test: %s not found (Debian with tests/deps.sh installed is required)", c)
		}
	}
	abi := qemuboot.ABI(t)
	build := qemuboot.Headers(t, abi)
	vmlinuz := qemuboot.Image(t, abi)
	work := t.TempDir()

	// Modules, built out of tree against the headers.
	mods := filepath.Join(work, "mods")
	if err := os.MkdirAll(mods, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"Makefile", "livepatch-cmdline.c", "livepatch-pause.c"} {
		qemuboot.CopyFile(t, filepath.Join("testdata", f), filepath.Join(mods, f), 0o644)
	}
	qemuboot.Run(t, mods, nil, "make", "-s", "-C", build, "M="+mods, "modules")
	// Another build of the same module (same name, other text): Load must not take the
	// loaded one for it.
	v2 := filepath.Join(work, "v2")
	if err := os.MkdirAll(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join("testdata", "livepatch-cmdline.c"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(v2, "livepatch-cmdline.c"), bytes.Replace(src, []byte("live patched"), []byte("live patched v2"), 1), 0o644)
	os.WriteFile(filepath.Join(v2, "Makefile"), []byte("obj-m := livepatch-cmdline.o\n"), 0o644)
	qemuboot.Run(t, v2, nil, "make", "-s", "-C", build, "M="+v2, "modules")
	cmdline := filepath.Join(mods, "livepatch-cmdline.ko")
	ko, err := os.ReadFile(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	// The same module claiming another release: only the vermagic differs.
	other := otherRelease(abi)
	patched := bytes.Replace(ko, []byte("vermagic="+abi+" "), []byte("vermagic="+other+" "), 1)
	if bytes.Equal(patched, ko) {
		t.Fatalf("vermagic=%s not found in %s", abi, cmdline)
	}
	otherKo := filepath.Join(work, "other-release.ko")
	if err := os.WriteFile(otherKo, patched, 0o644); err != nil {
		t.Fatal(err)
	}

	guest := filepath.Join(work, "guest")
	qemuboot.Run(t, ".", []string{"CGO_ENABLED=0"}, "go", "build", "-o", guest, "./guest")

	cpio := qemuboot.Initramfs(t, work, guest, map[string]string{
		"livepatch-cmdline.ko":    cmdline,
		"livepatch-pause.ko":      filepath.Join(mods, "livepatch-pause.ko"),
		"other-release.ko":        otherKo,
		"livepatch-cmdline-v2.ko": filepath.Join(v2, "livepatch-cmdline.ko"),
	})

	out := qemuboot.Boot(t, vmlinuz, cpio, 8*time.Minute, "syscare_marker=1")
	os.WriteFile(filepath.Join(work, "console.log"), out, 0o644)

	steps := map[string]step{}
	done := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		// A report may follow a kernel message on the same console line.
		_, rest, ok := strings.Cut(line, "KPTEST ")
		if !ok {
			continue
		}
		t.Log(line)
		if strings.HasPrefix(rest, "done ") {
			done = true
			continue
		}
		var s step
		if json.Unmarshal([]byte(rest), &s) == nil {
			steps[s.Step] = s
		}
	}
	if !done {
		t.Fatalf("guest did not finish; console:\n%s", out)
	}
	// Every step must be reported and pass; some details are checked here as well so
	// the host does not rely only on the guest's own verdict.
	want := map[string]string{
		"release":          abi,
		"cmdline-before":   "syscare_marker=1",
		"load":             "<nil>",
		"load-state":       "enabled",
		"cmdline-patched":  "syscare kpatch: live patched",
		"list":             "livepatch_cmdline",
		"other-build":      "another build of the module is loaded",
		"disable":          "<nil>",
		"disable-state":    "loaded (disabled)",
		"cmdline-disabled": "syscare_marker=1",
		"enable-freed":     "must be reloaded",
		"reload":           "syscare kpatch: live patched",
		"unload":           "<nil>",
		"unload-state":     "unloaded",
		"cmdline-unloaded": "syscare_marker=1",
		"other-release":    other,
		"stall-sleeper":    "in pause: true",
		"stall-timeout":    "stalled tasks: ",
		"stall-state":      "unloaded",
		"stall-retry":      "<nil>",
		"stall-unload":     "<nil>",
	}
	for name, sub := range want {
		s, ok := steps[name]
		switch {
		case !ok:
			t.Errorf("step %s: not reported", name)
		case !s.OK:
			t.Errorf("step %s: failed: %s", name, s.Detail)
		case !strings.Contains(s.Detail, sub):
			t.Errorf("step %s: detail %q lacks %q", name, s.Detail, sub)
		}
	}
	if s := steps["stall-timeout"]; !strings.Contains(s.Detail, "reverted") || strings.Contains(s.Detail, "not reverted") {
		t.Errorf("stall-timeout: transition not reverted: %s", s.Detail)
	}
}
