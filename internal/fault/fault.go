// Package fault holds the kinds of error every service shares, one name per concept, with no dependencies: a
// domain package returns them (wrapped with its own message) without importing a transport, and
// internal/rpcerr maps each kind to its code in one place.
//
// A service keeps its own names where its callers use them by aliasing these (var ErrNotFound =
// fault.ErrNotFound), so errors.Is matches across packages.
package fault

import "errors"

var (
	// ErrInvalidArgument is a client mistake in the request; every *FieldError matches it.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound is a named resource that does not exist (for this tenant).
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists is a create of a name or key that exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict is a write whose etag or version no longer matches what is stored: read again and retry.
	ErrConflict = errors.New("conflict")
	// ErrFailedPrecondition is an operation the resource's current state does not allow (a finished run, a
	// provider that is not configured).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrResourceExhausted is a quota, budget or limit that the request would pass.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrUnavailable is a dependency (a provider, a peer service) that failed or could not be reached: worth
	// retrying later.
	ErrUnavailable = errors.New("unavailable")
)

// FieldError is a client mistake in one request field. It matches ErrInvalidArgument, and its message names
// the field.
type FieldError struct {
	// Field is the request field path, for example "update_mask" or "filter.and[2].field".
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Field returns a *FieldError for field.
func Field(field, reason string) *FieldError { return &FieldError{Field: field, Reason: reason} }

// Error implements error.
func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Is reports whether target is ErrInvalidArgument.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidArgument }
