package rpcclient_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/upstream"
)

// flaky fails CreateNamespace with the configured code while broken, and counts the calls that reach it.
type flaky struct {
	memoryv1connect.UnimplementedMemoryServiceHandler
	broken atomic.Bool
	code   connect.Code
	mark   atomic.Value // a string: when set, errors carry the upstream provider-fault detail naming it
	calls  atomic.Int64
}

func (f *flaky) CreateNamespace(context.Context, *connect.Request[memoryv1.CreateNamespaceRequest]) (*connect.Response[memoryv1.CreateNamespaceResponse], error) {
	f.calls.Add(1)
	if f.broken.Load() {
		err := connect.NewError(f.code, errors.New("broken"))
		if p, _ := f.mark.Load().(string); p != "" {
			upstream.Mark(err, p)
		}
		return nil, err
	}
	return connect.NewResponse(&memoryv1.CreateNamespaceResponse{}), nil
}

func (f *flaky) Search(context.Context, *connect.Request[memoryv1.SearchRequest]) (*connect.Response[memoryv1.SearchResponse], error) {
	f.calls.Add(1)
	return nil, connect.NewError(connect.CodeUnavailable, errors.New("overloaded"))
}

func dialFlaky(t *testing.T, f *flaky, cfg rpcclient.Config) memoryv1.MemoryServiceClient {
	t.Helper()
	srv := rpcservertest.Start(t, rpcserver.Config{}, nil, rpcserver.Service{Name: memoryv1connect.MemoryServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(f, o...)
		}})
	cfg.Target, cfg.Service = srv.Addr, memoryv1.MemoryService_ServiceDesc.ServiceName
	conn, err := rpcclient.Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return memoryv1.NewMemoryServiceClient(conn)
}

var ns = &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "docs", Dimension: 3}}

func TestBreakerOpensOnServerFaultsAndRecovers(t *testing.T) {
	t.Parallel()
	f := &flaky{code: connect.CodeInternal}
	c := dialFlaky(t, f, rpcclient.Config{BreakerOpenFor: 300 * time.Millisecond})
	ctx := context.Background()
	f.broken.Store(true)
	for range 5 {
		if _, err := c.CreateNamespace(ctx, ns); status.Code(err) != codes.Internal {
			t.Fatalf("got %v, want the server's Internal", err)
		}
	}
	before := f.calls.Load()
	_, err := c.CreateNamespace(ctx, ns)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "circuit breaker open") {
		t.Fatalf("after 5 server faults: %v, want a fast Unavailable from the open breaker", err)
	}
	if f.calls.Load() != before {
		t.Errorf("an open breaker let a call through to the server")
	}

	f.broken.Store(false)
	time.Sleep(400 * time.Millisecond)
	for range 3 {
		if _, err := c.CreateNamespace(ctx, ns); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	}
}

// TestBreakerIgnoresProviderFaults: UNAVAILABLE errors marked as an upstream provider's fault (what the agent
// service answers when a tenant's model API fails) never open the breaker: 30 in a row all reach the server, and
// a healthy call still goes through; the same errors unmarked open it after 5.
func TestBreakerIgnoresProviderFaults(t *testing.T) {
	t.Parallel()
	f := &flaky{code: connect.CodeUnavailable}
	f.mark.Store("openai")
	c := dialFlaky(t, f, rpcclient.Config{BreakerOpenFor: time.Hour, MaxRetries: 1})
	ctx := context.Background()
	f.broken.Store(true)
	for range 30 {
		_, err := c.CreateNamespace(ctx, ns)
		if status.Code(err) != codes.Unavailable || !upstream.Is(err) {
			t.Fatalf("got %v, want the provider fault itself", err)
		}
	}
	if f.calls.Load() != 30 {
		t.Errorf("server saw %d of 30 provider-fault calls: the breaker opened", f.calls.Load())
	}
	f.broken.Store(false)
	if _, err := c.CreateNamespace(ctx, ns); err != nil {
		t.Errorf("healthy call after 30 provider faults: %v", err)
	}
	f.mark.Store("")
	f.broken.Store(true)
	for range 5 {
		c.CreateNamespace(ctx, ns)
	}
	if _, err := c.CreateNamespace(ctx, ns); !strings.Contains(fmt.Sprint(err), "circuit breaker open") {
		t.Errorf("after 5 unmarked Unavailable: %v, want the breaker open", err)
	}
}

func TestBreakerIgnoresClientErrors(t *testing.T) {
	t.Parallel()
	f := &flaky{code: connect.CodeAlreadyExists}
	c := dialFlaky(t, f, rpcclient.Config{})
	f.broken.Store(true)
	for range 20 {
		if _, err := c.CreateNamespace(context.Background(), ns); status.Code(err) != codes.AlreadyExists {
			t.Fatalf("call: %v, want AlreadyExists (a client error must never open the breaker)", err)
		}
	}
	if f.calls.Load() != 20 {
		t.Errorf("server saw %d calls, want 20", f.calls.Load())
	}
}

func TestRetriesOnlyIdempotentCallsWithinBudget(t *testing.T) {
	t.Parallel()
	f := &flaky{code: connect.CodeUnavailable}
	c := dialFlaky(t, f, rpcclient.Config{MaxRetries: 3, BreakerOpenFor: time.Hour})
	ctx := context.Background()

	// CreateNamespace is not idempotent in the contract: never retried.
	f.broken.Store(true)
	if _, err := c.CreateNamespace(ctx, ns); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v", err)
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("non-idempotent call reached the server %d times, want 1", n)
	}

	// Search is NO_SIDE_EFFECTS: retried up to 3 times.
	f.calls.Store(0)
	if _, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "docs", Query: &memoryv1.SearchRequest_Text{Text: "x"}}); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v", err)
	}
	if n := f.calls.Load(); n != 4 {
		t.Errorf("idempotent call reached the server %d times, want 1 + 3 retries", n)
	}
}
