package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/syscare/syscare/rpmbuild/selfcontain"
	"github.com/syscare/syscare/runtime/patchobj"
)

const resolveUsage = `usage: syscare-build resolve --debug-file TARGET.debug -o OUT.o PATCH.o

Makes a hand-written patch object (upatch.h) self-contained: every function it replaces
and every symbol of the target it uses is looked up in TARGET.debug (the target's
separate debug file, or the unstripped target itself) and recorded as an offset in
OUT.o, with the target's build-id, so that the patch applies on hosts without the
-debuginfo package. Symbols the target does not define (libc's, say) stay for the
loader to find in the process.
`

// runResolve is `syscare-build resolve`.
func runResolve(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("resolve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	debugFile := fs.String("debug-file", "", "")
	out := fs.String("o", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			io.WriteString(stdout, resolveUsage)
			return nil
		}
		return usageError{fmt.Errorf("resolve: %w", err)}
	}
	switch {
	case fs.NArg() != 1:
		return usageError{errors.New("resolve: want one patch object")}
	case *debugFile == "" || *out == "":
		return usageError{errors.New("resolve: --debug-file and -o are required")}
	}
	entries, err := selfcontain.Make(ctx, fs.Arg(0), *debugFile, *out)
	if err != nil {
		return fmt.Errorf("resolve: %w", err)
	}
	funcs := 0
	for _, e := range entries {
		if e.Key.Kind == patchobj.OffsetFunc {
			funcs++
		}
	}
	fmt.Fprintf(stdout, "%s: %d replaced functions and %d target symbols resolved\n", *out, funcs, len(entries)-funcs)
	return nil
}
