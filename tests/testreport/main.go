// Command testreport turns the `go test -json` stream of a run into what a person reads
// (one line per package, the output of failed tests, one line per skipped test with its
// reason) and ends with the slowest tests; with files instead of a stream it prints only
// the slowest tests of those runs together. CI uses it to show where its time goes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testreport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	slowest := fs.Int("slowest", 10, "how many of the slowest tests to print")
	save := fs.String("save", "", "also write the raw stream to this file (for a summary over several runs)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go test -json ... | testreport [-slowest N] [-save FILE]\n       testreport [-slowest N] RUN.json...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		// Summary over saved runs.
		r := newReport(io.Discard)
		for _, path := range fs.Args() {
			f, err := os.Open(path)
			if err != nil {
				fmt.Fprintf(stderr, "testreport: %v\n", err)
				return 1
			}
			err = r.read(f)
			f.Close()
			if err != nil {
				fmt.Fprintf(stderr, "testreport: %s: %v\n", path, err)
				return 1
			}
		}
		r.printSlowest(stdout, *slowest)
		return 0
	}
	in := stdin
	if *save != "" {
		f, err := os.Create(*save)
		if err != nil {
			fmt.Fprintf(stderr, "testreport: %v\n", err)
			return 1
		}
		defer f.Close()
		in = io.TeeReader(stdin, f)
	}
	r := newReport(stdout)
	if err := r.read(bufio.NewReader(in)); err != nil {
		fmt.Fprintf(stderr, "testreport: %v\n", err)
		return 1
	}
	r.printSlowest(stdout, *slowest)
	if r.failed {
		return 1
	}
	return 0
}
