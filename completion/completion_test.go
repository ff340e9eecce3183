// Package completion tests the bash and zsh completion of syscare and syscare-build in
// real shells against the built programs; patch names come from a running helper.
package completion

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/syscare/syscare/dbus/testbus"
	"github.com/syscare/syscare/runtime/elfsafe"
	"github.com/syscare/syscare/runtime/patchmeta"
	"github.com/syscare/syscare/tests/testenv"
)

// buildBin builds the programs the completion scripts call.
func buildBin(t *testing.T) (repo, bin string) {
	t.Helper()
	repo, _ = filepath.Abs("..")
	bin = t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+"/", "./helper/cmd/syscare", "./helper/cmd/syscare-helper", "./rpmbuild/cmd/syscare-build")
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return repo, bin
}

// bashComplete returns what the completion function offers for line (the cursor at
// its end; a trailing space starts a new word).
func bashComplete(t *testing.T, repo, bin string, env []string, line string) []string {
	t.Helper()
	script := `. "$REPO/completion/syscare.bash"; . "$REPO/completion/syscare-build.bash"
read -ra COMP_WORDS <<< "$LINE"; case $LINE in *" ") COMP_WORDS+=("");; esac
COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
case ${COMP_WORDS[0]} in syscare) _syscare;; syscare-build) _syscare_build;; esac
printf '%s\n' "${COMPREPLY[@]}"`
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", script)
	cmd.Env = append(os.Environ(), append(env, "REPO="+repo, "LINE="+line, "PATH="+bin+":"+os.Getenv("PATH"))...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("bash completion of %q: %v %s", line, err, stderr.String())
	}
	return strings.Fields(string(out))
}

func TestBashCommandsAndOptions(t *testing.T) {
	repo, bin := buildBin(t)
	for line, want := range map[string]string{
		"syscare ap":                "apply",
		"syscare ac":                "accept active",
		"syscare --j":               "--json",
		"syscare apply --f":         "--force",
		"syscare apply --pr":        "--progress",
		"syscare --bus s":           "session system",
		"syscare-build --dry":       "--dry-run",
		"syscare-build --kernel-c":  "--kernel-cache --kernel-config",
		"syscare build --patch-n":   "--patch-name",
		"syscare-build --output te": "testdata",
	} {
		got := bashComplete(t, repo, bin, nil, line)
		sort.Strings(got)
		if strings.Join(got, " ") != want {
			t.Errorf("%q completes to %q, want %q", line, got, want)
		}
	}
}

// TestBashPatchNames: identifiers are completed from the patches the helper lists.
func TestBashPatchNames(t *testing.T) {
	testenv.NeedRoot(t, "the helper reads the patch root")
	_, err := exec.LookPath("dbus-daemon")
	testenv.Require(t, err == nil, "dbus-daemon not found")
	repo, bin := buildBin(t)
	root := t.TempDir()
	installPatch(t, root, "HP001")
	installPatch(t, root, "HP002")
	bus, err := testbus.Start(testbus.Options{RepoDir: repo, Dir: t.TempDir(),
		HelperExec: filepath.Join(bin, "syscare-helper") + " --root " + root + " --no-watch"})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	env := []string{"DBUS_SYSTEM_BUS_ADDRESS=" + bus.Addr}
	got := bashComplete(t, repo, bin, env, "syscare apply ")
	if strings.Join(got, " ") != "victim-1.0-1/HP001-1-1/victim victim-1.0-1/HP002-1-1/victim" {
		t.Errorf("syscare apply <TAB>: %q (helper log: %s)", got, bus.Log.String())
	}
	if got := bashComplete(t, repo, bin, env, "syscare remove victim-1.0-1/HP002"); len(got) != 1 {
		t.Errorf("syscare remove victim-1.0-1/HP002<TAB>: %q", got)
	}
	if got := bashComplete(t, repo, bin, env, "syscare list "); len(got) != 0 {
		t.Errorf("list takes no identifier, offered %q", got)
	}
}

// installPatch writes a patch directory whose target is a copy of /bin/true.
func installPatch(t *testing.T, root, name string) {
	t.Helper()
	target := filepath.Join(root, "usr/bin/victim")
	if _, err := os.Stat(target); err != nil {
		data, err := os.ReadFile("/bin/true")
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(target), 0o755)
		if err := os.WriteFile(target, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f, err := elfsafe.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	id, err := elfsafe.BuildID(f.File)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	obj := []byte("object of " + name)
	sum := sha256.Sum256(obj)
	n := name[len(name)-2:]
	uuid := "00000000-0000-4000-8000-0000000000" + n
	meta := &patchmeta.Patch{Schema: patchmeta.SchemaVersion, UUID: uuid, Name: name, Version: "1", Release: "1",
		Arch: "x86_64", Kind: patchmeta.KindUser, Description: "completion test",
		Target: patchmeta.Package{Name: "victim", Version: "1.0", Release: "1", Arch: "x86_64", License: "MIT"},
		Entities: []patchmeta.Entity{{UUID: "00000000-0000-4000-8000-0000000001" + n, File: "victim.o", TargetPath: "/usr/bin/victim",
			BuildID: hex.EncodeToString(id), SHA256: hex.EncodeToString(sum[:]),
			Functions: []patchmeta.Function{{Name: "main"}}}}}
	dir := filepath.Join(root, "usr/lib/syscare/patches", uuid)
	os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, "victim.o"), obj, 0o644); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := meta.Encode(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, patchmeta.FileName), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestZshScripts: the zsh functions load in zsh's completion system and offer the
// commands from the help.
func TestZshScripts(t *testing.T) {
	_, err := exec.LookPath("zsh")
	testenv.Require(t, err == nil, "zsh not found (tests/deps.sh installs it)")
	repo, bin := buildBin(t)
	for _, f := range []string{"_syscare", "_syscare-build"} {
		if out, err := exec.Command("zsh", "-n", filepath.Join(repo, "completion", f)).CombinedOutput(); err != nil {
			t.Errorf("zsh -n %s: %v\n%s", f, err, out)
		}
	}
	// An interactive zsh on a pseudo-terminal (zpty) with the directory first on fpath:
	// type "syscare ac", press TAB, and read the listing zsh prints. readall waits up to
	// 30 s (a hang guard: compinit and the completion take seconds on a loaded machine).
	script := `zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PS1="P> "; fpath=('$REPO'/completion $fpath); autoload -Uz compinit; compinit -u -D; PATH='$BIN':$PATH'
local all= chunk i
readall() { for i in {1..300}; do while zpty -r -t z chunk; do all+=$chunk; done; [[ $all == *$~1* ]] && return; sleep 0.1; done }
readall 'P> '
zpty -w -n z 'syscare ac'
sleep 0.3
zpty -w -n z $'\t'
all=
readall 'accept*active'
print -r -- "$all"
zpty -d z`
	cmd := exec.Command("zsh", "-f", "-c", script)
	cmd.Env = append(os.Environ(), "REPO="+repo, "BIN="+bin)
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "accept  active") {
		t.Errorf("zsh: syscare ac<TAB> does not offer accept and active:\n%q", out)
	}
}
