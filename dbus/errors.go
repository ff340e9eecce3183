package syscarebus

import (
	"errors"

	godbus "github.com/godbus/dbus/v5"
)

// Named errors the service replies with; the message is safe to show a user.
const (
	ErrorPrefix             = "org.openeuler.SysCare1.Error."
	ErrorNotFound           = ErrorPrefix + "NotFound"
	ErrorBusy               = ErrorPrefix + "Busy"
	ErrorConflict           = ErrorPrefix + "Conflict"
	ErrorVerificationFailed = ErrorPrefix + "VerificationFailed"
	ErrorAccessDenied       = ErrorPrefix + "AccessDenied"
	ErrorInvalidState       = ErrorPrefix + "InvalidState"
	ErrorNotSupported       = ErrorPrefix + "NotSupported"
	ErrorFailed             = ErrorPrefix + "Failed"
	ErrorHealthCheckFailed  = ErrorPrefix + "HealthCheckFailed"
	ErrorOutsideWindow      = ErrorPrefix + "OutsideWindow"
)

// Error is a kind of failure the service replies with. The helper wraps one of the
// kinds below into each error it returns (fmt.Errorf("%w: ...", ErrBusy)), at the place
// that knows what went wrong; the bus error name comes from the kind itself, so there is
// one mapping from errors to bus names and no renaming on the way.
type Error struct {
	// Name is the bus error name (ErrorPrefix + kind).
	Name string
	text string
}

func (e *Error) Error() string { return e.text }

// The kinds of failure; errors.Is matches them through any wrapping.
var (
	ErrNotFound     = &Error{ErrorNotFound, "patch not found"}
	ErrBusy         = &Error{ErrorBusy, "target busy"}
	ErrConflict     = &Error{ErrorConflict, "patch conflict"}
	ErrVerify       = &Error{ErrorVerificationFailed, "verification failed"}
	ErrAccessDenied = &Error{ErrorAccessDenied, "access denied"}
	ErrInvalidState = &Error{ErrorInvalidState, "invalid state"}
	ErrNotSupported = &Error{ErrorNotSupported, "not supported"}
	// ErrHealth: a health check of a gated upgrade failed; the upgrade was rolled back.
	ErrHealth = &Error{ErrorHealthCheckFailed, "health check failed"}
	// ErrOutsideWindow: a policy run outside the policy's maintenance window; nothing done.
	ErrOutsideWindow = &Error{ErrorOutsideWindow, "outside the maintenance window"}
)

// NameOf returns the bus error name of err: the name of the first kind wrapped in it,
// ErrorFailed for an error of no kind.
func NameOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Name
	}
	return ErrorFailed
}

// BusError turns err into the bus error the service replies with; the message is the
// error text, which names patches, processes and reasons but no secrets.
func BusError(err error) *godbus.Error {
	if err == nil {
		return nil
	}
	return godbus.NewError(NameOf(err), []any{err.Error()})
}

// ErrorName returns the D-Bus error name of err, or "" when err is not a bus error.
func ErrorName(err error) string {
	var e godbus.Error
	if errors.As(err, &e) {
		return e.Name
	}
	var pe *godbus.Error
	if errors.As(err, &pe) {
		return pe.Name
	}
	return ""
}

// ErrorMessage returns the message of a bus error, or err.Error().
func ErrorMessage(err error) string {
	var e godbus.Error
	if errors.As(err, &e) && len(e.Body) > 0 {
		if s, ok := e.Body[0].(string); ok {
			return s
		}
	}
	var pe *godbus.Error
	if errors.As(err, &pe) && len(pe.Body) > 0 {
		if s, ok := pe.Body[0].(string); ok {
			return s
		}
	}
	return err.Error()
}
