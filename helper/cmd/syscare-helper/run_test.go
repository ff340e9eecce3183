package main

import (
	"context"
	"strings"
	"testing"
)

func TestHelpAndBadFlags(t *testing.T) {
	var out, errb strings.Builder
	if err := run(context.Background(), []string{"--help"}, &out, &errb); err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"Usage: syscare-helper", "org.openeuler.SysCare1", "-idle-timeout"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
	if errb.Len() != 0 {
		t.Errorf("--help wrote to stderr: %q", errb.String())
	}
	err := run(context.Background(), []string{"--bogus"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "see --help") {
		t.Errorf("--bogus: %v", err)
	}
	if err := run(context.Background(), []string{"extra"}, &out, &errb); err == nil {
		t.Error("a stray argument was accepted")
	}
}
