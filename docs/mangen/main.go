// Command mangen writes SysCare's man pages from the one source each has: a program's
// own --help text (syscare, syscare-build, upatch-manage, syscare-helper, dnf hotpatch)
// or a package's doc comment (upatch(5) from runtime/patchobj), so that the pages never
// drift from what the programs say. `make man` runs it; its test fails when a checked-in
// page differs from what the current sources give.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mangen:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mangen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin", "directory holding the built programs")
	src := fs.String("src", ".", "the repository root (dnf-plugin/, runtime/patchobj/)")
	out := fs.String("o", "docs/man", "output directory")
	version := fs.String("version", "", "version shown in the page footer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, p := range pages {
		text, err := p.source(sourceDirs{bin: *bin, src: *src})
		if err != nil {
			return fmt.Errorf("page %s(%d): %w", p.name, p.section, err)
		}
		var roff []byte
		if p.godoc != "" {
			roff = renderDoc(p, *version, text)
		} else {
			roff = renderHelp(p, *version, text)
		}
		if err := os.WriteFile(filepath.Join(*out, p.file()), roff, 0o644); err != nil {
			return err
		}
	}
	return nil
}
