// Package manager is syscare-helper's patch manager: it discovers installed patches, runs
// the patch state machine as transactions with rollback, applies the conflict and LIFO
// rules, verifies targets, keeps the state store, and recovers state after a restart.
package manager

import (
	"fmt"

	"github.com/syscare/syscare/dbus"
)

// State is the state of one entity; the order is meaningful (NotApplied < ... < Accepted).
type State int

// States of the patch state machine.
const (
	NotApplied State = iota
	Deactived
	Actived
	Accepted
)

func (s State) String() string {
	switch s {
	case NotApplied:
		return syscarebus.StatusNotApplied
	case Deactived:
		return syscarebus.StatusDeactived
	case Actived:
		return syscarebus.StatusActived
	case Accepted:
		return syscarebus.StatusAccepted
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ParseState parses a status string.
func ParseState(s string) (State, error) {
	for st := NotApplied; st <= Accepted; st++ {
		if st.String() == s {
			return st, nil
		}
	}
	return NotApplied, fmt.Errorf("unknown state %q", s)
}

// The kinds of failure are the bus contract's: an error wrapping one of them reaches
// the caller under that kind's bus error name, with no mapping in between.
var (
	ErrNotFound     = syscarebus.ErrNotFound
	ErrConflict     = syscarebus.ErrConflict
	ErrVerify       = syscarebus.ErrVerify
	ErrInvalidState = syscarebus.ErrInvalidState
	ErrNotSupported = syscarebus.ErrNotSupported
	ErrBusy         = syscarebus.ErrBusy
)

// Op is a command of the state machine.
type Op int

// Commands.
const (
	OpApply Op = iota
	OpActive
	OpDeactive
	OpRemove
	OpAccept
)

func (o Op) String() string {
	return [...]string{"apply", "active", "deactive", "remove", "accept"}[o]
}

// target returns the state op moves e to, or an error when op does not apply to from.
func (o Op) target(from State) (State, error) {
	switch o {
	case OpApply:
		return max(from, Actived), nil
	case OpActive:
		if from == NotApplied {
			return from, fmt.Errorf("%w: %s, apply it first", ErrInvalidState, from)
		}
		return max(from, Actived), nil
	case OpDeactive:
		if from == NotApplied {
			return from, fmt.Errorf("%w: %s", ErrInvalidState, from)
		}
		return Deactived, nil
	case OpRemove:
		return NotApplied, nil
	case OpAccept:
		if from < Actived {
			return from, fmt.Errorf("%w: %s, activate it first", ErrInvalidState, from)
		}
		return Accepted, nil
	}
	return from, fmt.Errorf("unknown operation %d", o)
}
