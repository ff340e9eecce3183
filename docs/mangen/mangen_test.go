package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/syscare/syscare/tests/testenv"
)

// generate builds the programs and writes every page into a scratch directory.
func generate(t *testing.T) (gen, root string) {
	t.Helper()
	root, _ = filepath.Abs("../..")
	_, err := exec.LookPath("dnf")
	testenv.Require(t, err == nil, "dnf not found (dnf-hotpatch(8) is made from dnf hotpatch --help)")
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./helper/cmd/syscare", "./helper/cmd/syscare-helper",
		"./rpmbuild/cmd/syscare-build", "./runtime/cmd/upatch-manage")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	spec, err := os.ReadFile(filepath.Join(root, "syscare.spec"))
	if err != nil {
		t.Fatal(err)
	}
	version := regexp.MustCompile(`(?m)^Version:\s*(\S+)`).FindSubmatch(spec)
	gen = t.TempDir()
	var stderr bytes.Buffer
	if err := run([]string{"-bin", bin, "-src", root, "-o", gen, "-version", string(version[1])}, &stderr); err != nil {
		t.Fatalf("mangen: %v\n%s", err, stderr.String())
	}
	return gen, root
}

// TestPagesMatchSources: the checked-in pages are exactly what the current help texts
// and doc comments give, so a changed flag without `make man` fails here.
func TestPagesMatchSources(t *testing.T) {
	gen, root := generate(t)
	for _, p := range pages {
		want, err := os.ReadFile(filepath.Join(gen, p.file()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, "docs/man", p.file()))
		if err != nil {
			t.Errorf("%v (run make man)", err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("docs/man/%s differs from %s: run make man", p.file(), p.origin())
		}
	}
}

var optRE = regexp.MustCompile(`(?:^|[\s\[|(,=])(--?[a-zA-Z][a-zA-Z0-9-]*)`)

func options(text string) []string {
	set := map[string]bool{}
	for _, m := range optRE.FindAllStringSubmatch(text, -1) {
		set[m[1]] = true
	}
	var out []string
	for o := range set {
		out = append(out, o)
	}
	sort.Strings(out)
	return out
}

// manText is the page's text as man shows it: roff requests and font escapes removed.
func manText(roff string) string {
	var b strings.Builder
	for _, l := range strings.Split(roff, "\n") {
		if strings.HasPrefix(l, ".") && !strings.HasPrefix(l, ".B ") && !strings.HasPrefix(l, ".I ") {
			continue
		}
		l = strings.TrimPrefix(strings.TrimPrefix(l, ".B "), ".I ")
		l = strings.NewReplacer(`\fB`, "", `\fI`, "", `\fR`, "", `\-`, "-", `\&`, "", `\e`, `\`).Replace(l)
		b.WriteString(l + "\n")
	}
	return b.String()
}

// TestOptionsMatchHelp: every option a program's help names is in its page, and the
// page names no option the help does not.
func TestOptionsMatchHelp(t *testing.T) {
	_, root := generate(t)
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "./helper/cmd/syscare", "./helper/cmd/syscare-helper",
		"./rpmbuild/cmd/syscare-build", "./runtime/cmd/upatch-manage")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, p := range pages {
		if p.godoc != "" {
			continue
		}
		help, err := p.source(sourceDirs{bin: bin, src: root})
		if err != nil {
			t.Fatal(err)
		}
		page, err := os.ReadFile(filepath.Join(root, "docs/man", p.file()))
		if err != nil {
			t.Fatal(err)
		}
		h, m := options(help), options(manText(string(page)))
		if strings.Join(h, " ") != strings.Join(m, " ") {
			t.Errorf("%s: options of --help %v, of the page %v", p.file(), h, m)
		}
		if len(h) < 4 {
			t.Errorf("%s: only %d options found in the help: %v", p.file(), len(h), h)
		}
	}
}

// TestRenderHelp pins the conventions the converter reads (see roff.go).
func TestRenderHelp(t *testing.T) {
	help := "usage: prog [--flag] CMD\n\nProse line one\n.dotted line two.\n\nCommands:\n" +
		"  list         every patch\n  upgrade [--accept] ID\n                 long description\n" +
		"                 continued\n\nOptions:\n  -root string\n    \troot prefix\n"
	got := string(renderHelp(page{name: "prog", section: 8, manual: "M", summary: "does it", command: []string{"prog", "--help"}}, "1", help))
	for _, want := range []string{
		".TH PROG 8 \"\" \"SysCare 1\" \"M\"\n",
		".SH NAME\nprog \\- does it\n",
		".SH SYNOPSIS\n.nf\nprog [\\-\\-flag] CMD\n.fi\n",
		".SH DESCRIPTION\n.PP\nProse line one\n\\&.dotted line two.\n",
		".SH COMMANDS\n.TP\n\\fBlist\\fR\nevery patch\n",
		".TP\n\\fBupgrade\\fR \\fB[\\-\\-accept]\\fR \\fIID\\fR\nlong description\ncontinued\n",
		".SH OPTIONS\n.TP\n\\fB\\-root\\fR \\fISTRING\\fR\nroot prefix\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rendered page lacks %q:\n%s", want, got)
		}
	}
}
