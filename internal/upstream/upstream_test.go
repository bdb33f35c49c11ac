package upstream_test

import (
	"errors"
	"fmt"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loom-dev/loom/internal/upstream"
)

func TestProvider(t *testing.T) {
	t.Parallel()
	marked := upstream.Mark(connect.NewError(connect.CodeUnavailable, errors.New("openai: HTTP 500")), "openai")
	if p, ok := upstream.Provider(fmt.Errorf("run x: %w", marked)); !ok || p != "openai" {
		t.Errorf("Provider(marked connect error) = %q, %v", p, ok)
	}
	st, _ := status.New(codes.Unavailable, "x").WithDetails(&errdetails.ErrorInfo{Domain: upstream.Domain,
		Reason: upstream.Reason, Metadata: map[string]string{upstream.ProviderKey: "gemini"}})
	if p, ok := upstream.Provider(st.Err()); !ok || p != "gemini" {
		t.Errorf("Provider(grpc status) = %q, %v", p, ok)
	}
	other, _ := status.New(codes.Unavailable, "x").WithDetails(&errdetails.ErrorInfo{Domain: "example.com", Reason: upstream.Reason})
	for _, err := range []error{nil, errors.New("plain"), status.Error(codes.Unavailable, "down"), other.Err(),
		connect.NewError(connect.CodeUnavailable, errors.New("down"))} {
		if upstream.Is(err) {
			t.Errorf("Is(%v) = true", err)
		}
	}
}
