// Package repotest builds, for tests, small real RPMs (targets, hot patches for them,
// look-alikes that are not hot patches) with rpmbuild and repositories of them with
// createrepo_c; both the resolver's tests (helper/repo) and the publisher's
// (rpmbuild/publish) use them.
package repotest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// specTemplate makes a small binary RPM. A hot patch fixture needs no real patch object
// here: resolution and publishing only look at the RPM's name, version and Requires.
const specTemplate = `Name: %s
Version: %s
Release: %s
%s
Summary: syscare repo test package
License: MIT
AutoReq: no
AutoProv: no
%s

%%description
Test package for helper/repo and rpmbuild/publish.

%%install
mkdir -p %%{buildroot}%s
echo %s > %%{buildroot}%s/data

%%files
%s/data
`

type fixtureRPM struct {
	name, epoch, version, release string
	requires                      []string
}

func (f fixtureRPM) spec() string {
	ep := ""
	if f.epoch != "" {
		ep = "Epoch: " + f.epoch
	}
	var req strings.Builder
	for _, r := range f.requires {
		req.WriteString("Requires: " + r + "\n")
	}
	dir := "/usr/share/" + f.name
	if strings.HasPrefix(f.name, "patch-") {
		dir = "/usr/lib/syscare/patches/" + f.name
	}
	return fmt.Sprintf(specTemplate, f.name, f.version, f.release, ep, req.String(), dir, f.name, dir, dir)
}

// The fixture set: targets, patches for them, and packages that look like patches but
// are not.
var fixtures = []fixtureRPM{
	{name: "hello", version: "1.0", release: "1"},
	{name: "hello", version: "1.0", release: "2"},
	{name: "other", epoch: "2", version: "3.0", release: "1"},
	{name: "patch-hello-1.0-1-HP001", version: "1", release: "1", requires: []string{"hello = 1.0-1", "syscare"}},
	{name: "patch-hello-1.0-1-HP002", version: "1", release: "1", requires: []string{"hello = 1.0-1", "syscare"}},
	{name: "patch-hello-1.0-2-HP001", version: "1", release: "1", requires: []string{"hello = 1.0-2", "syscare"}},
	{name: "patch-other-3.0-1-HP001", version: "1", release: "2", requires: []string{"other = 2:3.0-1", "syscare"}},
	// Named like a patch but requiring no exact target: not a hot patch.
	{name: "patch-notes-1-1-X", version: "1", release: "1", requires: []string{"syscare"}},
}

var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixtureErr  error
)

// RPMs builds the fixture RPMs once per test binary with the real rpmbuild and returns
// their paths, keyed by name-version-release. The test binary's TestMain calls Cleanup.
func RPMs(t testing.TB) map[string]string {
	t.Helper()
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "syscare-repo-rpms-")
		if fixtureErr != nil {
			return
		}
		top := filepath.Join(fixtureDir, "top")
		var wg sync.WaitGroup
		errs := make([]error, len(fixtures))
		for i, f := range fixtures {
			wg.Add(1)
			go func() {
				defer wg.Done()
				spec := filepath.Join(fixtureDir, fmt.Sprintf("%d.spec", i))
				if err := os.WriteFile(spec, []byte(f.spec()), 0o644); err != nil {
					errs[i] = err
					return
				}
				// rpmbuild's own mkdir of the top directory races with the parallel
				// builds creating the same parent ("File exists"): make it first.
				if err := os.MkdirAll(filepath.Join(top, fmt.Sprint(i)), 0o755); err != nil {
					errs[i] = err
					return
				}
				cmd := exec.Command("rpmbuild", "-bb", "--nodeps", "--quiet",
					"--define", "_topdir "+filepath.Join(top, fmt.Sprint(i)),
					"--define", "_build_id_links none", spec)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Run(); err != nil {
					errs[i] = fmt.Errorf("rpmbuild %s: %v\n%s", f.name, err, out.String())
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				fixtureErr = err
				return
			}
		}
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	rpms, _ := filepath.Glob(filepath.Join(fixtureDir, "top", "*", "RPMS", "*", "*.rpm"))
	m := map[string]string{}
	for _, r := range rpms {
		base := filepath.Base(r)
		nvr := base[:strings.LastIndexByte(strings.TrimSuffix(base, ".rpm"), '.')]
		m[nvr] = r
	}
	if len(m) != len(fixtures) {
		t.Fatalf("built %d fixture RPMs, want %d: %v", len(m), len(fixtures), rpms)
	}
	return m
}

// NewRepo copies the named fixture RPMs into a fresh directory and runs createrepo_c
// with the extra arguments.
func NewRepo(t testing.TB, extra []string, nvrs ...string) string {
	t.Helper()
	rpms := RPMs(t)
	dir := t.TempDir()
	for _, n := range nvrs {
		src, ok := rpms[n]
		if !ok {
			t.Fatalf("no fixture %s", n)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(src)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := append([]string{"-q", "--no-database"}, extra...)
	if out, err := exec.Command("createrepo_c", append(args, dir)...).CombinedOutput(); err != nil {
		t.Fatalf("createrepo_c: %v\n%s", err, out)
	}
	return dir
}

// Cleanup removes the fixture RPMs (TestMain calls it after the tests).
func Cleanup() {
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
}
