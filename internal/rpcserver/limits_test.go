package rpcserver_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// tenantAuth takes the tenant from a test header.
func tenantAuth(r *http.Request) (principal.Principal, error) {
	t := r.Header.Get("X-Test-Tenant")
	if t == "" {
		return principal.Principal{}, errors.New("no tenant")
	}
	return principal.Principal{Tenant: t, Subject: "user", Roles: []string{"admin"}}, nil
}

func TestRateLimitIsPerPrincipalAndFair(t *testing.T) {
	t.Parallel()
	mem := &fakeMemory{id: "a"}
	srv := rpcservertest.Start(t, rpcserver.Config{RateLimit: 5, RateBurst: 5}, tenantAuth, services(mem, &fakeAgent{started: make(chan struct{})})...)
	c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL)
	call := func(tenant string) error {
		req := connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})
		req.Header().Set("X-Test-Tenant", tenant)
		_, err := c.GetNamespace(context.Background(), req)
		return err
	}
	// Tenant a floods: its first 5 calls pass, then it is refused with a retry delay.
	var refused error
	for i := range 20 {
		if err := call("a"); err != nil {
			if i < 5 {
				t.Fatalf("call %d of tenant a refused within its burst: %v", i, err)
			}
			refused = err
		}
	}
	if connect.CodeOf(refused) != connect.CodeResourceExhausted {
		t.Fatalf("flooding tenant: %v, want ResourceExhausted", refused)
	}
	var cerr *connect.Error
	errors.As(refused, &cerr)
	var hasRetry bool
	for _, d := range cerr.Details() {
		if v, err := d.Value(); err == nil {
			if ri, ok := v.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
				hasRetry = true
			}
		}
	}
	if !hasRetry {
		t.Error("ResourceExhausted without a RetryInfo detail")
	}
	// Tenant b is unaffected by a's flood.
	for i := range 5 {
		if err := call("b"); err != nil {
			t.Fatalf("tenant b call %d refused while a floods: %v", i, err)
		}
	}
}

func TestLoadSheddingRefusesFast(t *testing.T) {
	t.Parallel()
	ag := &slowAgent{release: make(chan struct{}), started: make(chan struct{}, 4)}
	srv := rpcservertest.Start(t, rpcserver.Config{MaxInFlight: 2}, nil, rpcserver.Service{Name: agentv1connect.AgentServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return agentv1connect.NewAgentServiceHandler(ag, o...)
		}})
	c := agentv1connect.NewAgentServiceClient(rpcservertest.HTTPClient(), srv.URL)
	ctx := context.Background()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.GetVideo(ctx, connect.NewRequest(&agentv1.GetVideoRequest{Id: "v"}))
			errs <- err
		}()
	}
	<-ag.started
	<-ag.started
	start := time.Now()
	_, err := c.GetVideo(ctx, connect.NewRequest(&agentv1.GetVideoRequest{Id: "v"}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("third call with 2 in flight: %v, want ResourceExhausted", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v; load shedding must not queue", d)
	}
	close(ag.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("in-flight call: %v", err)
		}
	}
}

type slowAgent struct {
	agentv1connect.UnimplementedAgentServiceHandler
	started chan struct{}
	release chan struct{}
}

func (s *slowAgent) GetVideo(ctx context.Context, _ *connect.Request[agentv1.GetVideoRequest]) (*connect.Response[agentv1.GetVideoResponse], error) {
	s.started <- struct{}{}
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return connect.NewResponse(&agentv1.GetVideoResponse{}), nil
}

func TestHealthIsPublicEverythingElseNeedsCredentials(t *testing.T) {
	t.Parallel()
	refuse := func(*http.Request) (principal.Principal, error) {
		return principal.Principal{}, errors.New("no credentials")
	}
	srv := rpcservertest.Start(t, rpcserver.Config{Reflection: true}, refuse, services(&fakeMemory{id: "a"}, &fakeAgent{started: make(chan struct{})})...)
	conn := srv.GRPCConn(t)
	ctx := context.Background()
	res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: memoryv1connect.MemoryServiceName})
	if err != nil || res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health without credentials: %v %v", res, err)
	}
	if _, err := memoryv1.NewMemoryServiceClient(conn).GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "docs"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("RPC without credentials: %v, want Unauthenticated", err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err == nil {
		_ = stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("reflection without credentials: %v, want Unauthenticated", err)
	}
}

func TestWriteErrorStatusForPlainHTTP(t *testing.T) {
	t.Parallel()
	for code, want := range map[connect.Code]int{
		connect.CodeResourceExhausted: http.StatusTooManyRequests,
		connect.CodeUnauthenticated:   http.StatusUnauthorized,
		connect.CodeUnavailable:       http.StatusServiceUnavailable,
		connect.CodeInternal:          http.StatusInternalServerError,
	} {
		rec := httptest.NewRecorder()
		rpcserver.WriteError(rec, httptest.NewRequest(http.MethodGet, "/not-an-rpc", nil), connect.NewError(code, errors.New("x")))
		if rec.Code != want {
			t.Errorf("%v: status %d, want %d", code, rec.Code, want)
		}
	}
}

// TestDispatcherCountsOnce checks that a handler mounted beside the RPCs (the MCP endpoint) which turns its
// request into an in-process RPC through Dispatcher pays one rate token and holds one in-flight slot, not two:
// with a burst of 4 and room for one call in flight, 4 such requests each make their RPC, and the fifth is
// refused at the door.
func TestDispatcherCountsOnce(t *testing.T) {
	t.Parallel()
	mem := &fakeMemory{id: "a"}
	var srv *rpcservertest.Server
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := httptest.NewRequestWithContext(r.Context(), http.MethodPost, "/loom.memory.v1.MemoryService/GetNamespace", strings.NewReader(`{"name":"docs"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Test-Tenant", r.Header.Get("X-Test-Tenant"))
		rec := httptest.NewRecorder()
		srv.Dispatcher().ServeHTTP(rec, req)
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
	srv = rpcservertest.Start(t, rpcserver.Config{RateLimit: 0.001, RateBurst: 4, MaxInFlight: 1, MCP: inner}, tenantAuth, services(mem, &fakeAgent{started: make(chan struct{})})...)
	post := func() (int, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/mcp", http.NoBody)
		req.Header.Set("X-Test-Tenant", "a")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	for i := range 4 {
		if code, body := post(); code != http.StatusOK || !strings.Contains(body, `"a/a"`) {
			t.Fatalf("request %d within the burst: %d %s, want 200 and the RPC's answer", i, code, body)
		}
	}
	if code, _ := post(); code != http.StatusTooManyRequests {
		t.Errorf("fifth request: %d, want 429 (the burst is spent)", code)
	}
	if got := mem.calls.Load(); got != 4 {
		t.Errorf("the RPC ran %d times, want 4", got)
	}
}
