// Command syscare-helper is SysCare's D-Bus service: it owns org.openeuler.SysCare1 and
// manages the installed hot patches (see dbus/org.openeuler.SysCare1.xml).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "syscare-helper:", err)
		os.Exit(1)
	}
}
