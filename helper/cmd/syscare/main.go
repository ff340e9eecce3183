// Command syscare is SysCare's command-line interface: it lists, applies, activates,
// accepts and removes hot patches by asking syscare-helper over D-Bus.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ue usageError
	var es exitStatus
	switch {
	case err == nil:
	case errors.As(err, &es):
		os.Exit(int(es))
	case errors.As(err, &ue):
		fmt.Fprintln(os.Stderr, "syscare:", err)
		os.Exit(2)
	default:
		if !errors.Is(err, errReported) {
			fmt.Fprintln(os.Stderr, "syscare:", err)
		}
		os.Exit(1)
	}
}
