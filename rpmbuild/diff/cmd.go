package diff

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// RunDiff implements `syscare-build diff [-o PATCH.o] [-alias-prefix P] ORIG.o PATCHED.o`:
// it prints the classification and, with -o, writes the patch object. ErrNoChange and
// *UnpatchableError come back unwrapped-reachable so that main can map exit codes.
func RunDiff(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("diff", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "write the patch object to this file")
	prefix := fs.String("alias-prefix", "", "prefix for aliases of the original's local symbols")
	asJSON := fs.Bool("json", false, "print the patch report as JSON instead of the classification")
	report := fs.Bool("report", false, "print the patch report after the classification")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: syscare-build diff [-o PATCH.o] [-alias-prefix P] [-report | -json] ORIG.o PATCHED.o")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errors.New("diff: want two objects, ORIG.o and PATCHED.o")
	}
	orig, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	patched, err := os.ReadFile(fs.Arg(1))
	if err != nil {
		return err
	}
	r, err := Diff(bytes.NewReader(orig), bytes.NewReader(patched), Options{AliasPrefix: *prefix})
	if r != nil && !*asJSON {
		fmt.Fprint(stdout, r.String())
	}
	if *asJSON || *report {
		rp := ReportError(fs.Arg(1), err)
		if err == nil {
			rp = r.Report()
		}
		if rp != nil && *asJSON {
			b, jerr := rp.JSON()
			if jerr != nil {
				return jerr
			}
			stdout.Write(b)
		} else if rp != nil {
			fmt.Fprint(stdout, rp.Text())
		}
	}
	if err != nil {
		return fmt.Errorf("diff %s %s: %w", fs.Arg(0), fs.Arg(1), err)
	}
	if *out != "" {
		b, err := r.Object()
		if err != nil {
			return fmt.Errorf("emit patch object: %w", err)
		}
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
