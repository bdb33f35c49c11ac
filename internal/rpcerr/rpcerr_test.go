package rpcerr_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcerr"
)

var errOwn = errors.New("quota passed")

func TestMapper(t *testing.T) {
	var logs bytes.Buffer
	m := &rpcerr.Mapper{
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
		Service: "test",
		Rules: []rpcerr.Rule{
			rpcerr.Is(errOwn, connect.CodeResourceExhausted),
			// A service may answer one of the shared kinds its own way: this one wins over the kinds table.
			func(_ context.Context, err error) *connect.Error {
				if errors.Is(err, fault.ErrConflict) && strings.Contains(err.Error(), "special") {
					return connect.NewError(connect.CodeFailedPrecondition, errors.New("special conflict"))
				}
				return nil
			},
		},
		Message: func(s string) string { return strings.ReplaceAll(s, "sk-secret", "[redacted]") },
	}
	tests := []struct {
		name    string
		err     error
		code    connect.Code
		message string // the client-facing message; "" skips the check
		logged  bool
	}{
		{"connect error kept", connect.NewError(connect.CodePermissionDenied, errors.New("no")), connect.CodePermissionDenied, "no", false},
		{"no principal", fmt.Errorf("ctx: %w", principal.ErrNoPrincipal), connect.CodeUnauthenticated, "", false},
		{"canceled", fmt.Errorf("query: %w", context.Canceled), connect.CodeCanceled, "canceled", false},
		{"deadline", fmt.Errorf("query: %w", context.DeadlineExceeded), connect.CodeDeadlineExceeded, "deadline exceeded", false},
		{"field error", fmt.Errorf("validate: %w", fault.Field("filter.and[2].field", "must not be empty")), connect.CodeInvalidArgument, "filter.and[2].field: must not be empty", false},
		{"not found", fmt.Errorf("%w: namespace %q", fault.ErrNotFound, "docs"), connect.CodeNotFound, `not found: namespace "docs"`, false},
		{"already exists", fault.ErrAlreadyExists, connect.CodeAlreadyExists, "", false},
		{"conflict", fault.ErrConflict, connect.CodeAborted, "", false},
		{"precondition", fault.ErrFailedPrecondition, connect.CodeFailedPrecondition, "", false},
		{"exhausted", fault.ErrResourceExhausted, connect.CodeResourceExhausted, "", false},
		{"unavailable", fault.ErrUnavailable, connect.CodeUnavailable, "", false},
		{"service rule", fmt.Errorf("tenant a: %w", errOwn), connect.CodeResourceExhausted, "tenant a: quota passed", false},
		{"service rule before kinds", fmt.Errorf("special: %w", fault.ErrConflict), connect.CodeFailedPrecondition, "special conflict", false},
		{"message rewritten", fmt.Errorf("%w: key sk-secret refused", fault.ErrInvalidArgument), connect.CodeInvalidArgument, "invalid argument: key [redacted] refused", false},
		{"database unreachable", fmt.Errorf("insert: %w", &pgconn.PgError{Code: "57P01", Message: "terminating connection"}), connect.CodeUnavailable, "database unavailable", true},
		{"anything else", errors.New("pq: relation loom_x does not exist at /var/lib/x"), connect.CodeInternal, "internal error", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs.Reset()
			var ce *connect.Error
			if !errors.As(m.Error(context.Background(), "/p", tt.err), &ce) {
				t.Fatalf("not a connect error")
			}
			if ce.Code() != tt.code {
				t.Errorf("code = %v, want %v", ce.Code(), tt.code)
			}
			if tt.message != "" && ce.Message() != tt.message {
				t.Errorf("message = %q, want %q", ce.Message(), tt.message)
			}
			if got := logs.Len() > 0; got != tt.logged {
				t.Errorf("logged = %v, want %v: %s", got, tt.logged, logs.String())
			}
			if tt.logged && !strings.Contains(logs.String(), "procedure=/p") {
				t.Errorf("log without the procedure: %s", logs.String())
			}
		})
	}
	if err := m.Error(context.Background(), "", nil); err != nil {
		t.Errorf("nil mapped to %v", err)
	}
}

func TestZeroMapper(t *testing.T) {
	var m rpcerr.Mapper
	if code := connect.CodeOf(m.Error(context.Background(), "", fault.ErrNotFound)); code != connect.CodeNotFound {
		t.Errorf("code = %v", code)
	}
}
