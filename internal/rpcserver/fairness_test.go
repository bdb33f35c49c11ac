package rpcserver_test

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// keyAuth takes the principal from an "X-Test-Key: tenant/subject" header, role reader: an API key stand-in.
func keyAuth(r *http.Request) (principal.Principal, error) {
	tenant, subject, ok := strings.Cut(r.Header.Get("X-Test-Key"), "/")
	if !ok {
		return principal.Principal{}, errors.New("no key")
	}
	return principal.Principal{Tenant: tenant, Subject: subject, Roles: []string{"reader"}}, nil
}

// watcher holds every WatchRun stream open, after one first event, until its caller goes away; ListNamespaces
// blocks while block is set, until the call is cancelled.
type watcher struct {
	orchestratorv1connect.UnimplementedOrchestratorServiceHandler
	memoryv1connect.UnimplementedMemoryServiceHandler
	block   atomic.Bool
	entered chan struct{}
}

func (w *watcher) WatchRun(ctx context.Context, _ *connect.Request[orchestratorv1.WatchRunRequest], stream *connect.ServerStream[orchestratorv1.WatchRunResponse]) error {
	if err := stream.Send(&orchestratorv1.WatchRunResponse{}); err != nil {
		return err
	}
	<-ctx.Done()
	return connect.NewError(connect.CodeCanceled, ctx.Err())
}

func (w *watcher) ListNamespaces(ctx context.Context, _ *connect.Request[memoryv1.ListNamespacesRequest]) (*connect.Response[memoryv1.ListNamespacesResponse], error) {
	if w.block.Load() {
		w.entered <- struct{}{}
		<-ctx.Done()
		return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	return connect.NewResponse(&memoryv1.ListNamespacesResponse{}), nil
}

func startWatcher(t *testing.T, cfg rpcserver.Config) (*rpcservertest.Server, *watcher) {
	t.Helper()
	w := &watcher{entered: make(chan struct{}, 1024)}
	srv := rpcservertest.Start(t, cfg, keyAuth,
		rpcserver.Service{Name: orchestratorv1connect.OrchestratorServiceName, Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return orchestratorv1connect.NewOrchestratorServiceHandler(w, o...)
		}},
		rpcserver.Service{Name: memoryv1connect.MemoryServiceName, Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(w, o...)
		}},
	)
	return srv, w
}

// openStreams opens n WatchRun streams as key and returns how many were accepted (their first event arrived)
// and the refusals; accepted streams stay open until ctx is cancelled.
func openStreams(ctx context.Context, t *testing.T, url, key string, n int) (accepted int, refused []error) {
	t.Helper()
	hc := rpcservertest.HTTPClient()
	context.AfterFunc(ctx, hc.CloseIdleConnections)
	c := orchestratorv1connect.NewOrchestratorServiceClient(hc, url)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req := connect.NewRequest(&orchestratorv1.WatchRunRequest{Id: "r"})
			req.Header().Set("X-Test-Key", key)
			s, err := c.WatchRun(ctx, req)
			if err == nil && s.Receive() {
				mu.Lock()
				accepted++
				mu.Unlock()
				return
			}
			if err == nil {
				err = s.Err()
				_ = s.Close() // a refused stream's response is done: let the client free its buffers now
			}
			mu.Lock()
			refused = append(refused, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	return accepted, refused
}

// victimCalls makes n ListNamespaces calls as another tenant with a grpc-go client and counts refusals.
func victimCalls(t *testing.T, srv *rpcservertest.Server, n int) (refused int) {
	t.Helper()
	c := memoryv1.NewMemoryServiceClient(srv.GRPCConn(t))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-test-key", "other/reader-key")
	for range n {
		if _, err := c.ListNamespaces(ctx, &memoryv1.ListNamespacesRequest{}); err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("victim ListNamespaces: %v", err)
			}
			refused++
		}
	}
	return refused
}

// TestFairnessStreamFlood reproduces issue 17's starvation: 1,100 WatchRun streams from one reader key, then
// another tenant's ListNamespaces. Without fairness (the old behaviour) the streams take the whole global pool;
// with the default limits they take at most PrincipalMaxStreams slots and the other tenant is never refused.
func TestFairnessStreamFlood(t *testing.T) {
	const streams, calls = 1100, 100
	for _, tc := range []struct {
		name         string
		fairness     rpcserver.FairnessLimits
		wantAccepted int
		wantVictim   bool // victim calls all pass
	}{
		{name: "defaults", wantAccepted: rpcserver.DefaultPrincipalMaxStreams, wantVictim: true},
		{name: "disabled", fairness: rpcserver.FairnessLimits{TenantMaxInFlight: -1, TenantMaxStreams: -1, PrincipalMaxInFlight: -1, PrincipalMaxStreams: -1}, wantAccepted: 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := startWatcher(t, rpcserver.Config{Fairness: tc.fairness})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			before := heapMiB()
			accepted, refused := openStreams(ctx, t, srv.URL, "flood/reader-key", streams)
			during := heapMiB()
			for _, err := range refused {
				if connect.CodeOf(err) != connect.CodeResourceExhausted {
					t.Fatalf("refused stream: %v, want ResourceExhausted", err)
				}
			}
			victimRefused := victimCalls(t, srv, calls)
			cancel()
			srv.Stop()
			after := heapMiB()
			t.Logf("fairness %s: heap (client and server, one process) before the flood %.1f MiB, with the streams open %.1f MiB, after they closed %.1f MiB", tc.name, before, during, after)
			t.Logf("fairness %s: %d WatchRun streams from one key: %d open, %d refused (e.g. %v); another tenant's ListNamespaces refused %d of %d",
				tc.name, streams, accepted, len(refused), firstErr(refused), victimRefused, calls)
			if grown := during - before; grown > 128 {
				t.Errorf("heap grew %.0f MiB under the stream flood", grown)
			}
			if accepted != tc.wantAccepted {
				t.Errorf("open streams = %d, want %d", accepted, tc.wantAccepted)
			}
			if tc.wantVictim && victimRefused != 0 {
				t.Errorf("other tenant refused %d of %d calls while one key floods streams", victimRefused, calls)
			}
			if !tc.wantVictim && victimRefused == 0 {
				t.Errorf("without fairness the flood should starve the other tenant; the test does not reproduce the defect")
			}
		})
	}
}

// heapMiB is the Go heap in use after a GC.
func heapMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse) / (1 << 20)
}

func firstErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// TestFairnessUnaryLimits checks the unary limits per principal and per tenant, the refusal's code, message
// and RetryInfo, that streams do not count against unary calls, and that slots come back when calls end.
func TestFairnessUnaryLimits(t *testing.T) {
	t.Parallel()
	srv, w := startWatcher(t, rpcserver.Config{Fairness: rpcserver.FairnessLimits{
		TenantMaxInFlight: 3, PrincipalMaxInFlight: 2, TenantMaxStreams: 2, PrincipalMaxStreams: 2,
	}})
	w.block.Store(true)
	c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL)
	call := func(ctx context.Context, key string) error {
		req := connect.NewRequest(&memoryv1.ListNamespacesRequest{})
		req.Header().Set("X-Test-Key", key)
		_, err := c.ListNamespaces(ctx, req)
		return err
	}
	hold := func(ctx context.Context, key string, wg *sync.WaitGroup) {
		wg.Go(func() { _ = call(ctx, key) })
		<-w.entered
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Streams do not use up unary slots.
	if n, _ := openStreams(ctx, t, srv.URL, "a/k1", 2); n != 2 {
		t.Fatalf("open streams = %d, want 2", n)
	}
	hold(ctx, "a/k1", &wg)
	hold(ctx, "a/k1", &wg)
	wantRefused := func(key, limit string) {
		t.Helper()
		err := call(context.Background(), key)
		if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), limit) {
			t.Fatalf("call as %s: %v, want ResourceExhausted naming %s", key, err, limit)
		}
		var ce *connect.Error
		errors.As(err, &ce)
		var retry bool
		for _, d := range ce.Details() {
			if v, err := d.Value(); err == nil {
				_, retry = v.(*errdetails.RetryInfo)
			}
		}
		if !retry {
			t.Errorf("refusal without RetryInfo: %v", err)
		}
	}
	wantRefused("a/k1", "principal-max-in-flight")
	hold(ctx, "a/k2", &wg)
	wantRefused("a/k3", "tenant-max-in-flight")
	if _, refused := openStreams(ctx, t, srv.URL, "a/k3", 1); len(refused) != 1 || !strings.Contains(refused[0].Error(), "tenant-max-streams") {
		t.Fatalf("third stream of tenant a: %v, want refused naming tenant-max-streams", refused)
	}
	w.block.Store(false)
	if err := call(context.Background(), "b/k1"); err != nil {
		t.Fatalf("tenant b refused while tenant a is at its limit: %v", err)
	}
	cancel()
	wg.Wait()
	// The client returns when it cancels; the server releases the slot when its handler has seen the
	// cancellation and returned, a moment later. Slots must come back within a bounded time.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := call(context.Background(), "a/k1")
		if err == nil {
			break
		}
		if connect.CodeOf(err) != connect.CodeResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("tenant a refused after its calls ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
