package main

import (
	"context"
	"errors"
	"io"
)

// runRepo serves `syscare repo ...` (issue 5 replaces this stub).
func runRepo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("syscare repo: not built yet")
}
