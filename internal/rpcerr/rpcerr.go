// Package rpcerr is the one mapping from errors to Connect codes. Every service's handler calls a Mapper; the
// shared rules (connect errors as they are, a missing principal, cancellation, the kinds of internal/fault, an
// unreachable database, and Internal for anything else) are written once here, and a service adds only the
// errors that are its own (a quota with its detail, a provider fault with retry advice).
//
// Client mistakes keep their message, which names the field; server faults are logged with their detail and
// answered with a generic message, so nothing internal (SQL, paths, keys) reaches a caller.
package rpcerr

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/internal/dberr"
	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/principal"
)

// A Rule maps the errors one service owns; it returns nil for an error it does not know.
type Rule func(ctx context.Context, err error) *connect.Error

// Is is a Rule giving code to every error that matches target (errors.Is), with the error's message.
func Is(target error, code connect.Code) Rule {
	return func(_ context.Context, err error) *connect.Error {
		if errors.Is(err, target) {
			return connect.NewError(code, err)
		}
		return nil
	}
}

// Mapper maps a service's errors to Connect errors. The zero value works (it logs to slog.Default).
type Mapper struct {
	// Logger receives server faults; nil means slog.Default().
	Logger *slog.Logger
	// Service prefixes log messages, for example "memory".
	Service string
	// Rules are the service's own errors, tried after a connect error, a missing principal and cancellation,
	// and before the shared kinds, so a service can answer one of its kinds in its own way.
	Rules []Rule
	// Message rewrites every message that reaches a client (the agent scrubs credential-shaped text from
	// provider errors); nil keeps it.
	Message func(string) string
}

// kinds are the shared sentinels and their codes.
var kinds = []struct {
	err  error
	code connect.Code
}{
	{fault.ErrInvalidArgument, connect.CodeInvalidArgument},
	{fault.ErrNotFound, connect.CodeNotFound},
	{fault.ErrAlreadyExists, connect.CodeAlreadyExists},
	{fault.ErrConflict, connect.CodeAborted},
	{fault.ErrFailedPrecondition, connect.CodeFailedPrecondition},
	{fault.ErrResourceExhausted, connect.CodeResourceExhausted},
	{fault.ErrUnavailable, connect.CodeUnavailable},
}

// Error returns err as a Connect error; nil stays nil. procedure, if known, is logged with server faults.
func (m *Mapper) Error(ctx context.Context, procedure string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	switch {
	case errors.Is(err, principal.ErrNoPrincipal):
		return m.client(connect.CodeUnauthenticated, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	}
	for _, rule := range m.Rules {
		if ce := rule(ctx, err); ce != nil {
			if m.Message != nil {
				ce = m.rewrite(ce)
			}
			return ce
		}
	}
	var fe *fault.FieldError
	if errors.As(err, &fe) {
		return m.client(connect.CodeInvalidArgument, fe) // the field first, without what was being attempted
	}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return m.client(k.code, err)
		}
	}
	if dberr.Unavailable(err) {
		m.logger().WarnContext(ctx, m.prefix()+"database unavailable", "procedure", procedure, "error", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("database unavailable"))
	}
	m.logger().ErrorContext(ctx, m.prefix()+"internal error", "procedure", procedure, "error", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// client is a client-facing error with err's message, rewritten by Message.
func (m *Mapper) client(code connect.Code, err error) *connect.Error {
	msg := err.Error()
	if m.Message != nil {
		msg = m.Message(msg)
	}
	return connect.NewError(code, errors.New(msg))
}

// rewrite applies Message to a rule's error, keeping its details and metadata.
func (m *Mapper) rewrite(ce *connect.Error) *connect.Error {
	msg := m.Message(ce.Message())
	if msg == ce.Message() {
		return ce
	}
	out := connect.NewError(ce.Code(), errors.New(msg))
	for _, d := range ce.Details() {
		out.AddDetail(d)
	}
	for k, v := range ce.Meta() {
		out.Meta()[k] = v
	}
	return out
}

func (m *Mapper) logger() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.Default()
}

func (m *Mapper) prefix() string {
	if m.Service == "" {
		return ""
	}
	return m.Service + ": "
}
