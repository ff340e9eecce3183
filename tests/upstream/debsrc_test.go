package upstream

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// aptDir holds the private apt configuration that fetches the source packages.
func aptDir() string { return filepath.Join(binDir, "apt-debsrc") }

// needTools fails the test when a build tool the spec's build system runs is missing
// (tests/deps.sh installs them).
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (tests/deps.sh installs it): %v", tool, err)
		}
	}
}

// rpmSet is what rpmbuild -ba makes from one spec.
type rpmSet struct {
	top, srpm, rpm, debuginfo string
}

// rpmbuildSpec runs rpmbuild -ba on dir/specName with the tarball as Source0 (named
// source0 in SOURCES).
func rpmbuildSpec(t testing.TB, dir, specName, tarball, source0, name, version string) *rpmSet {
	t.Helper()
	top := t.TempDir()
	for _, d := range []string{"SOURCES", "SPECS"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, tarball, filepath.Join(top, "SOURCES", source0))
	spec := filepath.Join(top, "SPECS", specName)
	copyFile(t, filepath.Join(dir, specName), spec)
	out, err := exec.Command("rpmbuild", "-ba", "--nodeps", "--define", "_topdir "+top, spec).CombinedOutput()
	if err != nil {
		t.Fatalf("rpmbuild -ba %s: %v\n%s", specName, err, out)
	}
	find := func(pat string) string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(top, pat))
		if len(m) != 1 {
			t.Fatalf("%s: %d matches", pat, len(m))
		}
		return m[0]
	}
	return &rpmSet{top: top,
		srpm:      find("SRPMS/" + name + "-" + version + "-1*.src.rpm"),
		rpm:       find("RPMS/*/" + name + "-" + version + "-1*.rpm"),
		debuginfo: find("RPMS/*/" + name + "-debuginfo-" + version + "-1*.rpm")}
}

// syscareBuild runs syscare-build for one fix and returns its stdout and the patch RPM.
func syscareBuild(t testing.TB, pkgs *rpmSet, patchName, fix, wantRPM string) (string, string) {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command(builderBin, "--patch-name", patchName, "--source", pkgs.srpm, "--debuginfo", pkgs.debuginfo,
		"--patch", fix, "--output", out, "--jobs", "2")
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("syscare-build: %v\nstdout:\n%s\nstderr:\n%s", err, o.String(), e.String())
	}
	rpm := filepath.Join(out, wantRPM)
	if _, err := os.Stat(rpm); err != nil {
		t.Fatalf("syscare-build output: %v\n%s", err, o.String())
	}
	return o.String(), rpm
}

// startLines starts a program that answers one printed line per line it reads, as a
// repl (the Lua test's line-in, line-out driver).
func startLines(t *testing.T, env []string, path string, args ...string) *repl {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &repl{cmd: cmd, in: in, lines: make(chan string, 256)}
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", filepath.Base(path), stderr.String())
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		close(r.lines)
	}()
	return r
}
