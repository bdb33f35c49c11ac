package agentrpc_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/upstream"
)

// TestProviderFaultDetail: a run failed by its provider answers UNAVAILABLE carrying the upstream provider-fault
// detail naming the provider, seen by a grpc-go client and by a Connect client.
func TestProviderFaultDetail(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	ctx := testCtx(t)
	grpcc := h.clients["grpc"]
	create(t, ctx, grpcc, simAgent("flaky", &agentv1.SimScript{FailureRate: 1}))
	_, err := grpcc.Run(ctx, &agentv1.RunRequest{Agent: "flaky", Input: "hi"})
	if p, ok := upstream.Provider(err); status.Code(err) != codes.Unavailable || !ok || p != "sim" {
		t.Errorf("grpc-go: Run = %v (provider %q, %v), want Unavailable marked as sim's fault", err, p, ok)
	}
	cc := agentv1connect.NewAgentServiceClient(rpcservertest.HTTPClient(), h.url)
	creq := connect.NewRequest(&agentv1.RunRequest{Agent: "flaky", Input: "hi"})
	creq.Header().Set(tenantHeader, "t1")
	_, err = cc.Run(ctx, creq)
	if p, ok := upstream.Provider(err); connect.CodeOf(err) != connect.CodeUnavailable || !ok || p != "sim" {
		t.Errorf("connect: Run = %v (provider %q, %v), want Unavailable marked as sim's fault", err, p, ok)
	}
	// A fault of the service itself is not marked.
	_, err = grpcc.Run(ctx, &agentv1.RunRequest{Agent: "missing", Input: "hi"})
	if upstream.Is(err) {
		t.Errorf("NotFound is marked as a provider fault: %v", err)
	}
}

// TestTenantProviderFaultsIsolated: tenant A's provider fails on every call, through the service client every
// service uses (internal/rpcclient, with its circuit breaker). A's sim chaos (failure_rate 1) and A's OpenAI key
// being refused by the provider with HTTP 500 never open the client's breaker; A's own OpenAI breaker opens
// after 5 failures and then fails A's calls without reaching the provider; tenant B's runs on the same provider
// and the same connection all succeed.
func TestTenantProviderFaultsIsolated(t *testing.T) {
	t.Parallel()
	var aCalls, bCalls atomic.Int64
	llm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer sk-tenant-a-broken" {
			aCalls.Add(1)
			http.Error(w, `{"error":{"message":"upstream overloaded","type":"server_error"}}`, http.StatusInternalServerError)
			return
		}
		bCalls.Add(1)
		writeOpenAIOK(w)
	}))
	defer llm.Close()
	h := newHarness(t, agentrpc.Config{Models: testModels(model.Endpoint{}, model.Endpoint{APIKey: "sk-process-fine", BaseURL: llm.URL + "/v1"}),
		TenantKeys: fakeTenantKeys{"tenant-a/openai": "sk-tenant-a-broken"}})
	conn, err := rpcclient.Dial(rpcclient.Config{Target: h.addr, Service: agentv1.AgentService_ServiceDesc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := agentv1.NewAgentServiceClient(conn)
	a, b := asTenant(testCtx(t), "tenant-a"), asTenant(testCtx(t), "tenant-b")
	for _, ctx := range []context.Context{a, b} {
		create(t, ctx, c, &agentv1.Agent{Name: "oai", Model: &agentv1.Model{Provider: agentv1.Provider_PROVIDER_OPENAI, Name: "m"}})
	}
	create(t, a, c, simAgent("chaos", &agentv1.SimScript{FailureRate: 1}))

	const n = 30
	var aFailed, aFast, bOK int
	for i := range n {
		_, err := c.Run(a, &agentv1.RunRequest{Agent: "chaos", Input: fmt.Sprint("chaos ", i)})
		if status.Code(err) != codes.Unavailable || !upstream.Is(err) {
			t.Fatalf("tenant A chaos run %d = %v, want a marked Unavailable", i, err)
		}
		aFailed++
		before := aCalls.Load()
		_, err = c.Run(a, &agentv1.RunRequest{Agent: "oai", Input: fmt.Sprint("a ", i)})
		if status.Code(err) != codes.Unavailable || !upstream.Is(err) {
			t.Fatalf("tenant A openai run %d = %v, want a marked Unavailable", i, err)
		}
		aFailed++
		if aCalls.Load() == before {
			aFast++
			if !strings.Contains(status.Convert(err).Message(), "paused") {
				t.Errorf("fast failure %q does not say the calls are paused", status.Convert(err).Message())
			}
		}
		resp, err := c.Run(b, &agentv1.RunRequest{Agent: "oai", Input: fmt.Sprint("b ", i)})
		if err != nil || resp.GetRun().GetOutput() != "ok" {
			t.Fatalf("tenant B run %d after %d of tenant A's failures = %v, %v", i, aFailed, resp.GetRun(), err)
		}
		bOK++
	}
	if got := aCalls.Load(); got != 5 {
		t.Errorf("tenant A's broken provider was called %d times, want 5 (then its breaker opened)", got)
	}
	if aFast != n-5 {
		t.Errorf("tenant A fast failures = %d, want %d", aFast, n-5)
	}
	if bCalls.Load() != n {
		t.Errorf("tenant B's provider calls = %d, want %d", bCalls.Load(), n)
	}
	t.Logf("tenant A: %d failed runs (%d sim chaos, %d openai: 5 reached the provider, %d failed fast); tenant B: %d of %d runs succeeded, service breaker never opened",
		aFailed, n, n, aFast, bOK, n)
}
