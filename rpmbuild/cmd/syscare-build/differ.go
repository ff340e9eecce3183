package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/syscare/syscare/rpmbuild/builder"
	"github.com/syscare/syscare/rpmbuild/debuginfo"
	"github.com/syscare/syscare/rpmbuild/diff"
)

// The builder knows the differ only as a function, so that its pipeline stands alone
// (and is testable) without the differ; this file wires rpmbuild/diff in.
func init() {
	runDiff = diff.RunDiff
	builder.Differ = diffObject
	unpatchable = func(err error) bool {
		var u *diff.UnpatchableError
		return errors.As(err, &u) || errors.Is(err, builder.ErrUnpatchable)
	}
	isDiffNoChange = func(err error) bool { return errors.Is(err, diff.ErrNoChange) }
}

func diffObject(orig, patched string, loc *debuginfo.Locator, prefix string) (*builder.ObjectDiff, error) {
	o, err := os.ReadFile(orig)
	if err != nil {
		return nil, err
	}
	p, err := os.ReadFile(patched)
	if err != nil {
		return nil, err
	}
	r, err := diff.Diff(bytes.NewReader(o), bytes.NewReader(p), diff.Options{Locator: loc, Resolver: loc, AliasPrefix: prefix})
	if errors.Is(err, diff.ErrNoChange) {
		return nil, builder.NoChange(err)
	}
	var u *diff.UnpatchableError
	if errors.As(err, &u) {
		return nil, refusal{err}
	}
	if err != nil {
		return nil, err
	}
	frag, err := r.Object()
	if err != nil {
		return nil, fmt.Errorf("emit patch object: %w", err)
	}
	return &builder.ObjectDiff{Fragment: frag, Classification: r.String(), Report: r.Report(), Changed: r.Changed(), New: r.New()}, nil
}

// refusal is the differ's refusal as the builder sees it: ErrUnpatchable, with the
// differ's own message (which already says "cannot be hot patched").
type refusal struct{ err error }

func (r refusal) Error() string        { return r.err.Error() }
func (r refusal) Unwrap() error        { return r.err }
func (r refusal) Is(target error) bool { return target == builder.ErrUnpatchable }
