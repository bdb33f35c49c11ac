package orchestratorrpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/orchestrator"
)

func TestConnectError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		err     error
		code    connect.Code
		message string // substring; "" checks nothing
		logged  bool
	}{
		{name: "not found", err: fmt.Errorf("get: %w", orchestrator.ErrNotFound), code: connect.CodeNotFound, message: "get: not found"},
		{name: "exists", err: fmt.Errorf("create: %w", orchestrator.ErrAlreadyExists), code: connect.CodeAlreadyExists},
		{name: "version", err: fmt.Errorf("update: %w", orchestrator.ErrConflict), code: connect.CodeAborted},
		{name: "page token", err: orchestrator.ErrInvalidPageToken, code: connect.CodeInvalidArgument},
		{name: "precondition", err: fmt.Errorf("cancel: %w", orchestrator.ErrFailedPrecondition), code: connect.CodeFailedPrecondition},
		{name: "canceled", err: fmt.Errorf("query: %w", context.Canceled), code: connect.CodeCanceled},
		{name: "deadline", err: fmt.Errorf("query: %w", context.DeadlineExceeded), code: connect.CodeDeadlineExceeded},
		{name: "unauthenticated", err: principal.ErrNoPrincipal, code: connect.CodeUnauthenticated},
		{name: "connect error", err: connect.NewError(connect.CodeUnimplemented, errors.New("later")), code: connect.CodeUnimplemented},
		{name: "invalid", err: &invalidBlueprintError{errs: []*orchestratorv1.ValidationError{{Path: "steps[0].id", Message: "bad", Line: 3, Column: 5}}},
			code: connect.CodeInvalidArgument, message: "steps[0].id: bad (line 3, column 5)"},
		{name: "internal", err: errors.New("pq: password=secret"), code: connect.CodeInternal, message: "internal error", logged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs bytes.Buffer
			s := New(slog.New(slog.NewTextHandler(&logs, nil)), nil, nil)
			got := s.connectError(context.Background(), tt.err)
			var ce *connect.Error
			if !errors.As(got, &ce) || ce.Code() != tt.code {
				t.Fatalf("connectError() = %v, want code %v", got, tt.code)
			}
			if !strings.Contains(ce.Message(), tt.message) {
				t.Errorf("message = %q, want it to contain %q", ce.Message(), tt.message)
			}
			if tt.code == connect.CodeInternal && strings.Contains(ce.Message(), "secret") {
				t.Errorf("internal error leaks its cause: %q", ce.Message())
			}
			if gotLogged := logs.Len() > 0; gotLogged != tt.logged {
				t.Errorf("logged = %v, want %v (%s)", gotLogged, tt.logged, logs.String())
			}
		})
	}
}

func TestInvalidBlueprintMessageIsBounded(t *testing.T) {
	t.Parallel()
	var errs []*orchestratorv1.ValidationError
	for i := range 50 {
		errs = append(errs, &orchestratorv1.ValidationError{Path: fmt.Sprintf("steps[%d].id", i), Message: "bad"})
	}
	msg := (&invalidBlueprintError{errs: errs}).Error()
	if !strings.Contains(msg, "steps[19].id") || strings.Contains(msg, "steps[20].id") || !strings.Contains(msg, "and 30 more") {
		t.Errorf("message = %q, want the first 20 paths and a count of the rest", msg)
	}
}
