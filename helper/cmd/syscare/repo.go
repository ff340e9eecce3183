package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/syscare/syscare/dbus"
	"github.com/syscare/syscare/helper/repo"
	"github.com/syscare/syscare/rpmbuild/publish"
)

const repoUsage = `usage:
  syscare repo add REPODIR PATCH.rpm... --advisory ID [--cve CVE]... [--severity S]
                   [--type security|bugfix|enhancement] [--title T] [--description D]
      copy hot patch RPMs into a repository, publish them under an advisory in its
      updateinfo, and refresh the metadata (createrepo_c, modifyrepo_c); idempotent
  syscare repo resolve [--root DIR] [--metadata DIR]... [--cve CVE]... [--advisory ID]...
                       [--all] [--json]
      the hot patches that the repositories (default: DIR/etc/yum.repos.d) offer for
      the packages installed under DIR, resolved locally without syscare-helper
`

// repoFlags parses GNU-style options that may come before, between or after the
// positional arguments; every option here takes a value except the listed booleans.
func repoFlags(args []string, bools map[string]bool) (map[string][]string, []string, error) {
	vals := map[string][]string{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "--") {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		if bools[name] {
			if hasVal {
				return nil, nil, usageError{fmt.Sprintf("--%s takes no value", name)}
			}
			vals[name] = append(vals[name], "true")
			continue
		}
		if _, known := bools["?"+name]; !known {
			return nil, nil, usageError{fmt.Sprintf("unknown option --%s", name)}
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, nil, usageError{fmt.Sprintf("--%s needs a value", name)}
			}
			i++
			val = args[i]
		}
		vals[name] = append(vals[name], val)
	}
	return vals, pos, nil
}

// valueFlags marks the options that take a value, in the map repoFlags reads.
func valueFlags(bools map[string]bool, names ...string) map[string]bool {
	for _, n := range names {
		bools["?"+n] = false
	}
	return bools
}

// splitList accepts both repeated options and comma-separated values.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, x := range strings.Split(v, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
	}
	return out
}

func last(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// runRepo serves `syscare repo ...`.
func runRepo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, repoUsage)
		return usageError{"repo needs a subcommand (add, resolve)"}
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, repoUsage)
		return nil
	case "add":
		return repoAdd(ctx, args[1:], stdout)
	case "resolve":
		return repoResolve(ctx, args[1:], stdout)
	}
	return usageError{fmt.Sprintf("unknown repo subcommand %q (add, resolve)", args[0])}
}

func repoAdd(ctx context.Context, args []string, stdout io.Writer) error {
	vals, pos, err := repoFlags(args, valueFlags(map[string]bool{},
		"advisory", "cve", "severity", "type", "title", "description"))
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usageError{"repo add needs REPODIR and at least one PATCH.rpm"}
	}
	if last(vals["advisory"]) == "" {
		return usageError{"repo add needs --advisory ID"}
	}
	res, err := publish.Add(ctx, publish.AddRequest{
		RepoDir: pos[0], RPMs: pos[1:], Advisory: last(vals["advisory"]), CVEs: splitList(vals["cve"]),
		Severity: last(vals["severity"]), Type: last(vals["type"]), Title: last(vals["title"]),
		Description: last(vals["description"]),
	})
	if err != nil {
		return err
	}
	for _, f := range res.Copied {
		fmt.Fprintf(stdout, "copied %s\n", f)
	}
	if !res.Changed {
		fmt.Fprintf(stdout, "advisory %s is already published in %s: nothing to do\n", res.Published.ID, pos[0])
		return nil
	}
	a := res.Published
	fmt.Fprintf(stdout, "published advisory %s (%s", a.ID, a.Type)
	if a.Severity != "" {
		fmt.Fprintf(stdout, ", %s", a.Severity)
	}
	if len(a.CVEs) > 0 {
		fmt.Fprintf(stdout, ", %s", strings.Join(a.CVEs, " "))
	}
	fmt.Fprintf(stdout, ") with %d package(s) in %s\n", len(a.Packages), pos[0])
	return nil
}

func repoResolve(ctx context.Context, args []string, stdout io.Writer) error {
	vals, pos, err := repoFlags(args, valueFlags(map[string]bool{"all": true, "json": true},
		"root", "metadata", "cve", "advisory"))
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Sprintf("repo resolve takes no argument %q", pos[0])}
	}
	cands, err := repo.Resolve(ctx, repo.Request{
		Root: last(vals["root"]), MetadataDirs: vals["metadata"], CVEs: splitList(vals["cve"]),
		Advisories: splitList(vals["advisory"]), All: len(vals["all"]) > 0,
	})
	if err != nil {
		return err
	}
	if len(vals["json"]) > 0 {
		if cands == nil {
			cands = []syscarebus.Candidate{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(cands)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ADVISORY\tCVES\tSEVERITY\tPATCH\tTARGET\tINSTALLED")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, c := range cands {
		inst := "no"
		if c.Installed {
			inst = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(c.Advisory), dash(strings.Join(c.CVEs, ",")),
			dash(c.Severity), c.Package, c.Target.NEVRA(), inst)
	}
	return tw.Flush()
}
