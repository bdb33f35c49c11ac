package gateway_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/loom-dev/loom/gateway"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

const (
	testKey      = "Bearer test-key-acme"
	orchestrator = "loom.orchestrator.v1.OrchestratorService"
)

var caller = principal.Principal{Tenant: "acme", Subject: "user-1", Roles: []string{"writer"}}

// gatewayAuth accepts only the test API key and yields caller.
func gatewayAuth(r *http.Request) (principal.Principal, error) {
	if r.Header.Get("Authorization") == testKey {
		return caller, nil
	}
	return principal.Principal{}, authn.ErrNoCredentials
}

// serviceTokens returns a new signing key's public half, a minter that signs with it and a verifier that
// accepts its tokens for services.
func serviceTokens(t *testing.T, services ...string) (ed25519.PublicKey, *authn.Minter, *authn.ServiceVerifier) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := authn.NewMinter(priv, 0)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := authn.NewServiceVerifier(services, pub)
	if err != nil {
		t.Fatal(err)
	}
	return pub, minter, verifier
}

// backendAuth accepts only service tokens, as a real backend does.
func backendAuth(v *authn.ServiceVerifier) rpcserver.Authenticator {
	return func(r *http.Request) (principal.Principal, error) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			return principal.Principal{}, authn.ErrNoCredentials
		}
		return v.Verify(tok, r.URL.Path)
	}
}

type call struct {
	backend string
	header  http.Header
	who     principal.Principal
}

// recorder collects the calls the fake backends received.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) add(c call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, c)
}

func (r *recorder) all() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// fakeMemory answers Get with its own name in missing_ids, so the caller knows which backend answered.
type fakeMemory struct {
	memoryv1connect.UnimplementedMemoryServiceHandler
	name string
	rec  *recorder
}

func (f *fakeMemory) Get(ctx context.Context, req *connect.Request[memoryv1.GetRequest]) (*connect.Response[memoryv1.GetResponse], error) {
	who, _ := principal.FromContext(ctx)
	f.rec.add(call{backend: f.name, header: req.Header().Clone(), who: who})
	return connect.NewResponse(&memoryv1.GetResponse{MissingIds: []string{f.name}}), nil
}

// fakeAgent streams 5 chunks of speech. Unless the text is "free", it sends a chunk only once the test allows
// it on next, which proves the gateway forwards each chunk as it arrives. It reports a canceled stream on
// canceled.
type fakeAgent struct {
	agentv1connect.UnimplementedAgentServiceHandler
	next     chan struct{}
	canceled chan struct{}
}

func (f *fakeAgent) SynthesizeSpeech(ctx context.Context, req *connect.Request[agentv1.SynthesizeSpeechRequest], stream *connect.ServerStream[agentv1.SynthesizeSpeechResponse]) error {
	for i := range 5 {
		if i > 0 && req.Msg.GetText() != "free" {
			select {
			case <-f.next:
			case <-ctx.Done():
				f.canceled <- struct{}{}
				return ctx.Err()
			}
		}
		if err := stream.Send(&agentv1.SynthesizeSpeechResponse{Audio: []byte{byte(i)}, MimeType: "audio/wav"}); err != nil {
			return err
		}
	}
	return nil
}

type env struct {
	gw     *rpcservertest.Server
	proxy  *gateway.Proxy
	mem    [2]*rpcservertest.Server
	rec    *recorder
	agent  *fakeAgent
	pub    ed25519.PublicKey
	client *http.Client
}

// newEnv starts two memory backends, one agent backend and a gateway in front of them. The orchestrator's
// target is a closed port.
func newEnv(t *testing.T) *env {
	t.Helper()
	pub, minter, verifier := serviceTokens(t, memoryv1connect.MemoryServiceName, agentv1connect.AgentServiceName)
	e := &env{rec: &recorder{}, pub: pub, client: rpcservertest.HTTPClient(),
		agent: &fakeAgent{next: make(chan struct{}), canceled: make(chan struct{}, 4)}}
	for i, name := range []string{"mem-a", "mem-b"} {
		fake := &fakeMemory{name: name, rec: e.rec}
		e.mem[i] = rpcservertest.Start(t, rpcserver.Config{}, backendAuth(verifier), rpcserver.Service{
			Name: memoryv1connect.MemoryServiceName,
			Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
				return memoryv1connect.NewMemoryServiceHandler(fake, opts...)
			},
		})
	}
	agentSrv := rpcservertest.Start(t, rpcserver.Config{}, backendAuth(verifier), rpcserver.Service{
		Name: agentv1connect.AgentServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return agentv1connect.NewAgentServiceHandler(e.agent, opts...)
		},
	})
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var err error
	e.proxy, err = gateway.New(logger, gateway.Config{
		Backends: map[string]string{
			memoryv1connect.MemoryServiceName: e.mem[0].Addr + "," + e.mem[1].Addr,
			agentv1connect.AgentServiceName:   agentSrv.Addr,
			orchestrator:                      "127.0.0.1:1",
		},
		MaxRequestBytes: 64 << 10,
	}, minter)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.proxy.Close() })
	e.gw = rpcservertest.Start(t, rpcserver.Config{Fallback: e.proxy}, gatewayAuth)
	waitHealthy(t, e.proxy, memoryv1connect.MemoryServiceName, 2)
	waitHealthy(t, e.proxy, agentv1connect.AgentServiceName, 1)
	return e
}

func waitHealthy(t *testing.T, p *gateway.Proxy, service string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(p.Healthy(service)) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: healthy backends %v, want %d", service, p.Healthy(service), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func authed[T any](msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set("Authorization", testKey)
	return req
}

func grpcCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", testKey)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestUnaryProtocols(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name   string
		client *http.Client
		opts   []connect.ClientOption
	}{
		{name: "connect proto", client: e.client},
		{name: "connect json", client: e.client, opts: []connect.ClientOption{connect.WithProtoJSON()}},
		{name: "connect json http1", client: &http.Client{}, opts: []connect.ClientOption{connect.WithProtoJSON()}},
		{name: "connect get", client: e.client, opts: []connect.ClientOption{connect.WithHTTPGet()}},
		{name: "grpc", client: e.client, opts: []connect.ClientOption{connect.WithGRPC()}},
		{name: "grpc-web", client: e.client, opts: []connect.ClientOption{connect.WithGRPCWeb()}},
		{name: "grpc-web http1", client: &http.Client{}, opts: []connect.ClientOption{connect.WithGRPCWeb()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := memoryv1connect.NewMemoryServiceClient(tt.client, e.gw.URL, tt.opts...)
			res, err := c.Get(testCtx(t), authed(&memoryv1.GetRequest{Namespace: "ns", Ids: []string{"x"}}))
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if got := res.Msg.GetMissingIds(); len(got) != 1 || !strings.HasPrefix(got[0], "mem-") {
				t.Errorf("answered by %v, want a memory backend", got)
			}
		})
	}
	t.Run("grpc-go", func(t *testing.T) {
		c := memoryv1.NewMemoryServiceClient(e.gw.GRPCConn(t))
		res, err := c.Get(grpcCtx(testCtx(t)), &memoryv1.GetRequest{Namespace: "ns", Ids: []string{"x"}})
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if got := res.GetMissingIds(); len(got) != 1 || !strings.HasPrefix(got[0], "mem-") {
			t.Errorf("answered by %v, want a memory backend", got)
		}
	})
}

func TestServerStreamChunkByChunk(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	check := func(t *testing.T, recv func() (*agentv1.SynthesizeSpeechResponse, error)) {
		t.Helper()
		for i := range 5 {
			msg, err := recv()
			if err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			if len(msg.GetAudio()) != 1 || msg.GetAudio()[0] != byte(i) {
				t.Fatalf("chunk %d: audio %v", i, msg.GetAudio())
			}
			if i < 4 {
				// The backend sends chunk i+1 only now: had the gateway buffered chunk i, recv would have hung.
				e.agent.next <- struct{}{}
			}
		}
		if msg, err := recv(); err == nil {
			t.Fatalf("sixth message %v, want end of stream", msg)
		}
	}
	for _, tt := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{name: "connect"}, {name: "connect json", opts: []connect.ClientOption{connect.WithProtoJSON()}},
		{name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
		{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := agentv1connect.NewAgentServiceClient(e.client, e.gw.URL, tt.opts...)
			stream, err := c.SynthesizeSpeech(testCtx(t), authed(&agentv1.SynthesizeSpeechRequest{Text: "hello"}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			check(t, func() (*agentv1.SynthesizeSpeechResponse, error) {
				if stream.Receive() {
					return stream.Msg(), nil
				}
				if stream.Err() == nil {
					return nil, errors.New("end of stream")
				}
				return nil, stream.Err()
			})
		})
	}
	t.Run("grpc-go", func(t *testing.T) {
		c := agentv1.NewAgentServiceClient(e.gw.GRPCConn(t))
		stream, err := c.SynthesizeSpeech(grpcCtx(testCtx(t)), &agentv1.SynthesizeSpeechRequest{Text: "hello"})
		if err != nil {
			t.Fatal(err)
		}
		check(t, stream.Recv)
	})
}

func TestClientCancelCancelsBackend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	c := agentv1connect.NewAgentServiceClient(e.client, e.gw.URL)
	stream, err := c.SynthesizeSpeech(ctx, authed(&agentv1.SynthesizeSpeechRequest{Text: "hello"}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatalf("first chunk: %v", stream.Err())
	}
	cancel()
	select {
	case <-e.agent.canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("backend handler's context was not canceled after the client went away")
	}
	stream.Close()
}

func TestRoundRobin(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := memoryv1connect.NewMemoryServiceClient(e.client, e.gw.URL)
	counts := map[string]int{}
	for range 20 {
		res, err := c.Get(testCtx(t), authed(getReq()))
		if err != nil {
			t.Fatal(err)
		}
		counts[res.Msg.GetMissingIds()[0]]++
	}
	if counts["mem-a"] != 10 || counts["mem-b"] != 10 {
		t.Errorf("calls per backend %v, want 10 each", counts)
	}
}

func TestNotServingBackendGetsNoCalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := memoryv1connect.NewMemoryServiceClient(e.client, e.gw.URL)
	spread := func() map[string]int {
		counts := map[string]int{}
		for range 10 {
			res, err := c.Get(testCtx(t), authed(getReq()))
			if err != nil {
				t.Fatal(err)
			}
			counts[res.Msg.GetMissingIds()[0]]++
		}
		return counts
	}

	e.mem[0].SetServing(false)
	time.Sleep(time.Second)
	if counts := spread(); counts["mem-a"] != 0 {
		t.Fatalf("1 s after NOT_SERVING, calls per backend %v; want none on mem-a", counts)
	}

	e.mem[0].SetServing(true)
	deadline := time.Now().Add(2 * time.Second)
	for spread()["mem-a"] == 0 {
		if time.Now().After(deadline) {
			t.Fatal("mem-a got no calls 2 s after SERVING again")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestBackendSeesServiceTokenOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := memoryv1connect.NewMemoryServiceClient(e.client, e.gw.URL)
	req := authed(getReq())
	req.Header().Set("X-Loom-Tenant", "evil")
	req.Header().Set("X-Loom-Internal", "1")
	req.Header().Set("X-Forwarded-For", "6.6.6.6")
	req.Header().Set("X-Forwarded-Host", "evil.example.com")
	req.Header().Set("Forwarded", "for=6.6.6.6")
	if _, err := c.Get(testCtx(t), req); err != nil {
		t.Fatal(err)
	}
	gc := memoryv1.NewMemoryServiceClient(e.gw.GRPCConn(t))
	ctx := metadata.AppendToOutgoingContext(grpcCtx(testCtx(t)), "x-loom-tenant", "evil")
	if _, err := gc.Get(ctx, getReq()); err != nil {
		t.Fatal(err)
	}

	verifier, err := authn.NewServiceVerifier([]string{memoryv1connect.MemoryServiceName, agentv1connect.AgentServiceName}, e.pub)
	if err != nil {
		t.Fatal(err)
	}
	calls := e.rec.all()
	if len(calls) != 2 {
		t.Fatalf("backend calls %d, want 2", len(calls))
	}
	for _, got := range calls {
		auth := got.header.Values("Authorization")
		if len(auth) != 1 || auth[0] == testKey {
			t.Fatalf("backend Authorization %q, want one service token", auth)
		}
		tok := strings.TrimPrefix(auth[0], "Bearer ")
		who, err := verifier.Verify(tok, memoryv1connect.MemoryServiceGetProcedure)
		if err != nil {
			t.Fatalf("verify service token: %v", err)
		}
		if who.Tenant != caller.Tenant || who.Subject != caller.Subject {
			t.Errorf("token principal %+v, want %+v", who, caller)
		}
		if got.who.Tenant != caller.Tenant {
			t.Errorf("backend principal %+v, want tenant %q", got.who, caller.Tenant)
		}
		if _, err := verifier.Verify(tok, agentv1connect.AgentServiceRunProcedure); err == nil {
			t.Error("memory token accepted for the agent service: audience not checked")
		}
		for name := range got.header {
			if strings.HasPrefix(name, "X-Loom-") {
				t.Errorf("backend saw internal header %s: %q", name, got.header.Values(name))
			}
		}
		if xff := got.header.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, want the gateway's view of the client only", xff)
		}
		if got.header.Get("Forwarded") != "" || got.header.Get("X-Forwarded-Host") == "evil.example.com" {
			t.Errorf("client forwarding headers passed through: %v", got.header)
		}
	}
}

func TestNoCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := memoryv1connect.NewMemoryServiceClient(e.client, e.gw.URL)
	_, err := c.Get(testCtx(t), connect.NewRequest(getReq()))
	if got := connect.CodeOf(err); got != connect.CodeUnauthenticated {
		t.Errorf("connect: code %v (%v), want Unauthenticated", got, err)
	}
	gc := memoryv1.NewMemoryServiceClient(e.gw.GRPCConn(t))
	_, err = gc.Get(testCtx(t), getReq())
	if got := status.Code(err); got != codes.Unauthenticated {
		t.Errorf("grpc-go: code %v (%v), want Unauthenticated", got, err)
	}
	if n := len(e.rec.all()); n != 0 {
		t.Errorf("backend called %d times, want 0", n)
	}
}

// TestNoPrincipal calls the proxy directly, without rpcserver's authentication in front of it.
func TestNoPrincipal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := httptest.NewRequest(http.MethodPost, memoryv1connect.MemoryServiceGetProcedure, strings.NewReader("{}"))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	e.proxy.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), `"unauthenticated"`) {
		t.Errorf("got %d %s, want 401 with a Connect unauthenticated error", w.Code, w.Body)
	}
	if n := len(e.rec.all()); n != 0 {
		t.Errorf("backend called %d times, want 0", n)
	}
}

func TestOversizeRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	big := &memoryv1.GetRequest{Namespace: "ns", Ids: []string{strings.Repeat("x", 100<<10)}}
	for _, tt := range []struct {
		name string
		opts []connect.ClientOption
	}{
		{name: "connect"}, {name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
		{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := memoryv1connect.NewMemoryServiceClient(e.client, e.gw.URL, tt.opts...)
			_, err := c.Get(testCtx(t), authed(big))
			if got := connect.CodeOf(err); got != connect.CodeResourceExhausted {
				t.Errorf("code %v (%v), want ResourceExhausted", got, err)
			}
		})
	}
	t.Run("grpc-go", func(t *testing.T) {
		// grpc-go sends no Content-Length: the limit is met while the body streams.
		gc := memoryv1.NewMemoryServiceClient(e.gw.GRPCConn(t))
		_, err := gc.Get(grpcCtx(testCtx(t)), big)
		if got := status.Code(err); got != codes.ResourceExhausted {
			t.Errorf("code %v (%v), want ResourceExhausted", got, err)
		}
	})
	t.Run("streamed body", func(t *testing.T) {
		// A body of unknown length: the limit is met while it is forwarded, not from Content-Length.
		body := `{"namespace":"ns","ids":["` + strings.Repeat("x", 100<<10) + `"]}`
		req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, e.gw.URL+memoryv1connect.MemoryServiceGetProcedure,
			io.MultiReader(strings.NewReader(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", testKey)
		res, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		got, _ := io.ReadAll(res.Body)
		if req.ContentLength != 0 || res.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(got), "resource_exhausted") {
			t.Errorf("got %d %s, want 429 resource_exhausted", res.StatusCode, got)
		}
	})
	if n := len(e.rec.all()); n != 0 {
		t.Errorf("backend called %d times, want 0", n)
	}
}

func TestUnknownServiceAndNoBackend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tt := range []struct {
		name      string
		procedure string
		want      connect.Code
	}{
		{name: "unknown service", procedure: "/loom.nope.v1.NopeService/Get", want: connect.CodeUnimplemented},
		{name: "not a procedure", procedure: "/loom.memory.v1.MemoryService/Get/extra", want: connect.CodeUnimplemented},
		{name: "no healthy backend", procedure: "/" + orchestrator + "/GetWorkflow", want: connect.CodeUnavailable},
	} {
		for _, proto := range []struct {
			name string
			opts []connect.ClientOption
		}{
			{name: "connect"}, {name: "grpc", opts: []connect.ClientOption{connect.WithGRPC()}},
			{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
		} {
			t.Run(tt.name+"/"+proto.name, func(t *testing.T) {
				c := connect.NewClient[emptypb.Empty, emptypb.Empty](e.client, e.gw.URL+tt.procedure, proto.opts...)
				_, err := c.CallUnary(testCtx(t), authed(&emptypb.Empty{}))
				if got := connect.CodeOf(err); got != tt.want {
					t.Errorf("code %v (%v), want %v", got, err, tt.want)
				}
			})
		}
	}
}

func TestDNSTarget(t *testing.T) {
	t.Parallel()
	_, minter, _ := serviceTokens(t, memoryv1connect.MemoryServiceName)
	rec := &recorder{}
	backend := rpcservertest.Start(t, rpcserver.Config{}, nil, rpcserver.Service{
		Name: memoryv1connect.MemoryServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(&fakeMemory{name: "dns", rec: rec}, opts...)
		},
	})
	_, port, _ := strings.Cut(backend.Addr, ":")
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	proxy, err := gateway.New(logger, gateway.Config{Backends: map[string]string{
		memoryv1connect.MemoryServiceName: "dns:///localhost:" + port,
	}}, minter)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	// localhost may also resolve to ::1, where nothing listens: health checking keeps it out.
	waitHealthy(t, proxy, memoryv1connect.MemoryServiceName, 1)
	if got := proxy.Healthy(memoryv1connect.MemoryServiceName); got[0] != backend.Addr {
		t.Errorf("healthy %v, want %s", got, backend.Addr)
	}
	gw := rpcservertest.Start(t, rpcserver.Config{Fallback: proxy}, gatewayAuth)
	c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), gw.URL)
	for range 4 {
		if _, err := c.Get(testCtx(t), authed(getReq())); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     gateway.Config
		wantErr bool
	}{
		{name: "static list", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "a:1, b:2"}}},
		{name: "single", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "a:1"}}},
		{name: "dns", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "dns:///memory:8080"}}},
		{name: "ipv6", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "[::1]:80"}}},
		{name: "empty", cfg: gateway.Config{}, wantErr: true},
		{name: "short name", cfg: gateway.Config{Backends: map[string]string{"MemoryService": "a:1"}}, wantErr: true},
		{name: "path name", cfg: gateway.Config{Backends: map[string]string{"/loom.memory.v1.MemoryService": "a:1"}}, wantErr: true},
		{name: "no port", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "a"}}, wantErr: true},
		{name: "empty target", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": " , "}}, wantErr: true},
		{name: "dns no port", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "dns:///memory"}}, wantErr: true},
		{name: "other scheme", cfg: gateway.Config{Backends: map[string]string{"loom.memory.v1.MemoryService": "http://a:1"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.cfg.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

func getReq() *memoryv1.GetRequest { return &memoryv1.GetRequest{Namespace: "ns", Ids: []string{"x"}} }
