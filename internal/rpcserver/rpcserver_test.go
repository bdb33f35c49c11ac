package rpcserver_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"google.golang.org/protobuf/reflect/protoreflect"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	authv1 "github.com/loom-dev/loom/gen/loom/auth/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// fakeMemory answers GetNamespace with its own id (to see where calls land), panics on Get, and echoes Upsert.
type fakeMemory struct {
	memoryv1connect.UnimplementedMemoryServiceHandler
	id    string
	calls atomic.Int64
}

func (f *fakeMemory) GetNamespace(ctx context.Context, req *connect.Request[memoryv1.GetNamespaceRequest]) (*connect.Response[memoryv1.GetNamespaceResponse], error) {
	f.calls.Add(1)
	p, _ := principal.FromContext(ctx)
	return connect.NewResponse(&memoryv1.GetNamespaceResponse{Namespace: &memoryv1.Namespace{
		Name: req.Msg.GetName(), Description: f.id + "/" + p.Tenant,
	}}), nil
}

func (f *fakeMemory) Get(context.Context, *connect.Request[memoryv1.GetRequest]) (*connect.Response[memoryv1.GetResponse], error) {
	panic("boom")
}

func (f *fakeMemory) Upsert(_ context.Context, req *connect.Request[memoryv1.UpsertRequest]) (*connect.Response[memoryv1.UpsertResponse], error) {
	return connect.NewResponse(&memoryv1.UpsertResponse{Ids: []string{fmt.Sprint(len(req.Msg.GetRecords()))}}), nil
}

// fakeAgent streams SynthesizeSpeech chunks slowly, to test streams across shutdown.
type fakeAgent struct {
	agentv1connect.UnimplementedAgentServiceHandler
	started chan struct{}
}

func (f *fakeAgent) SynthesizeSpeech(ctx context.Context, req *connect.Request[agentv1.SynthesizeSpeechRequest], stream *connect.ServerStream[agentv1.SynthesizeSpeechResponse]) error {
	close(f.started)
	for i := range 5 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if err := stream.Send(&agentv1.SynthesizeSpeechResponse{Audio: []byte{byte(i)}}); err != nil {
			return err
		}
	}
	return nil
}

func services(mem *fakeMemory, ag *fakeAgent) []rpcserver.Service {
	return []rpcserver.Service{
		{Name: memoryv1connect.MemoryServiceName, Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(mem, o...)
		}},
		{Name: agentv1connect.AgentServiceName, Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return agentv1connect.NewAgentServiceHandler(ag, o...)
		}},
	}
}

func start(t *testing.T, cfg rpcserver.Config) (*rpcservertest.Server, *fakeMemory, *fakeAgent) {
	t.Helper()
	mem := &fakeMemory{id: "a"}
	ag := &fakeAgent{started: make(chan struct{})}
	return rpcservertest.Start(t, cfg, nil, services(mem, ag)...), mem, ag
}

func TestProtocols(t *testing.T) {
	t.Parallel()
	srv, _, _ := start(t, rpcserver.Config{})
	ctx := context.Background()

	t.Run("connect client", func(t *testing.T) {
		for _, opts := range [][]connect.ClientOption{nil, {connect.WithGRPC()}, {connect.WithGRPCWeb()}} {
			c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL, opts...)
			res, err := c.GetNamespace(ctx, connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"}))
			if err != nil {
				t.Fatalf("GetNamespace: %v", err)
			}
			if got, want := res.Msg.GetNamespace().GetDescription(), "a/local"; got != want {
				t.Errorf("description = %q, want %q", got, want)
			}
		}
	})

	t.Run("grpc-go client", func(t *testing.T) {
		c := memoryv1.NewMemoryServiceClient(srv.GRPCConn(t))
		res, err := c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "docs"})
		if err != nil {
			t.Fatalf("GetNamespace: %v", err)
		}
		if res.GetNamespace().GetName() != "docs" {
			t.Errorf("name = %q", res.GetNamespace().GetName())
		}
		_, err = c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "Not Valid"})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "name") {
			t.Errorf("invalid name: got %v, want InvalidArgument naming the field", err)
		}
	})

	t.Run("connect JSON over net/http", func(t *testing.T) {
		res, err := http.Post(srv.URL+"/loom.memory.v1.MemoryService/GetNamespace", "application/json", strings.NewReader(`{"name":"docs"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"name":"docs"`) {
			t.Errorf("status %d body %s", res.StatusCode, body)
		}
	})

	t.Run("grpc-web over net/http", func(t *testing.T) {
		msg, _ := proto.Marshal(&memoryv1.GetNamespaceRequest{Name: "docs"})
		frame := make([]byte, 5+len(msg))
		binary.BigEndian.PutUint32(frame[1:5], uint32(len(msg)))
		copy(frame[5:], msg)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/loom.memory.v1.MemoryService/GetNamespace", bytes.NewReader(frame))
		req.Header.Set("Content-Type", "application/grpc-web+proto")
		req.Header.Set("X-Grpc-Web", "1")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if len(body) < 5 || body[0] != 0 {
			t.Fatalf("want a data frame first, got % x", body)
		}
		n := binary.BigEndian.Uint32(body[1:5])
		var got memoryv1.GetNamespaceResponse
		if err := proto.Unmarshal(body[5:5+n], &got); err != nil {
			t.Fatal(err)
		}
		if got.GetNamespace().GetName() != "docs" {
			t.Errorf("name = %q", got.GetNamespace().GetName())
		}
		if trailer := string(body[5+n:]); !strings.Contains(trailer, "grpc-status: 0") {
			t.Errorf("trailer frame %q lacks grpc-status: 0", trailer)
		}
	})

	t.Run("healthz readyz metrics", func(t *testing.T) {
		for path, want := range map[string]string{
			"/healthz": "ok",
			"/readyz":  "ready",
			"/metrics": `loom_rpc_requests_total{code="ok",procedure="/loom.memory.v1.MemoryService/GetNamespace"}`,
		} {
			res, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
				t.Errorf("GET %s: status %d, body lacks %q", path, res.StatusCode, want)
			}
		}
	})
}

func TestCORS(t *testing.T) {
	t.Parallel()
	srv, _, _ := start(t, rpcserver.Config{CORSOrigins: []string{"https://console.example"}})
	for _, tc := range []struct {
		origin  string
		allowed bool
	}{{"https://console.example", true}, {"https://evil.example", false}} {
		req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/loom.memory.v1.MemoryService/GetNamespace", nil)
		req.Header.Set("Origin", tc.origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization,connect-protocol-version,content-type")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		got := res.Header.Get("Access-Control-Allow-Origin") == tc.origin &&
			strings.Contains(strings.ToLower(res.Header.Get("Access-Control-Allow-Headers")), "authorization")
		if got != tc.allowed {
			t.Errorf("origin %s: allowed=%v, want %v (headers %v)", tc.origin, got, tc.allowed, res.Header)
		}
	}
}

func TestLimitsAndPanics(t *testing.T) {
	t.Parallel()
	srv, _, _ := start(t, rpcserver.Config{MaxMessageBytes: 64 << 10})
	ctx := context.Background()
	c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL, connect.WithGRPC())

	t.Run("panic becomes Internal and the server lives on", func(t *testing.T) {
		_, err := c.Get(ctx, connect.NewRequest(&memoryv1.GetRequest{Namespace: "docs", Ids: []string{"x"}}))
		if connect.CodeOf(err) != connect.CodeInternal || strings.Contains(err.Error(), "boom") {
			t.Fatalf("got %v, want Internal without the panic detail", err)
		}
		if _, err := c.GetNamespace(ctx, connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); err != nil {
			t.Fatalf("next call: %v", err)
		}
	})

	t.Run("oversize request", func(t *testing.T) {
		big := &memoryv1.UpsertRequest{Namespace: "docs", Records: []*memoryv1.Record{{Text: strings.Repeat("x", 65000)}, {Text: strings.Repeat("y", 65000)}}}
		_, err := c.Upsert(ctx, connect.NewRequest(big))
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("got %v, want ResourceExhausted", err)
		}
		if _, err := c.GetNamespace(ctx, connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); err != nil {
			t.Fatalf("server unhealthy after oversize request: %v", err)
		}
	})

	t.Run("gzip bomb", func(t *testing.T) {
		// 1 GiB of zeros in about 1 MiB: one gzip member of 1 MiB of zeros, repeated 1024 times (a gzip stream
		// may hold many members, and readers read them all), so building the bomb costs one small compression.
		// The server must stop decompressing at the limit.
		var member, buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
		_, _ = zw.Write(make([]byte, 1<<20))
		_ = zw.Close()
		for range 1024 {
			buf.Write(member.Bytes())
		}
		frame := make([]byte, 5, 5+buf.Len())
		frame[0] = 1 // compressed
		binary.BigEndian.PutUint32(frame[1:5], uint32(buf.Len()))
		frame = append(frame, buf.Bytes()...)
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/loom.memory.v1.MemoryService/Upsert", bytes.NewReader(frame))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Grpc-Encoding", "gzip")
		req.Header.Set("Te", "trailers")
		start := time.Now()
		res, err := rpcservertest.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if got := res.Trailer.Get("Grpc-Status") + res.Header.Get("Grpc-Status"); got != fmt.Sprint(int(codes.ResourceExhausted)) {
			t.Errorf("grpc-status = %q, want %d (ResourceExhausted)", got, codes.ResourceExhausted)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v: the server decompressed far past the limit", d)
		}
	})
}

func TestDeadlines(t *testing.T) {
	t.Parallel()
	var got atomic.Int64
	mem := &deadlineMemory{got: &got}
	srv := rpcservertest.Start(t, rpcserver.Config{DefaultTimeout: 3 * time.Second, MaxTimeout: 7 * time.Second}, nil,
		rpcserver.Service{Name: memoryv1connect.MemoryServiceName, Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(mem, o...)
		}})
	c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL)
	for _, tc := range []struct {
		name     string
		timeout  time.Duration
		min, max time.Duration
	}{
		{"none gets the default", 0, 2 * time.Second, 3 * time.Second},
		{"short is kept", time.Second, 0, time.Second},
		{"long is capped", time.Hour, 6 * time.Second, 7 * time.Second},
	} {
		ctx := context.Background()
		if tc.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.timeout)
			defer cancel()
		}
		if _, err := c.GetNamespace(ctx, connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if d := time.Duration(got.Load()); d < tc.min || d > tc.max {
			t.Errorf("%s: handler saw %v left, want between %v and %v", tc.name, d, tc.min, tc.max)
		}
	}
}

type deadlineMemory struct {
	memoryv1connect.UnimplementedMemoryServiceHandler
	got *atomic.Int64
}

func (d *deadlineMemory) GetNamespace(ctx context.Context, _ *connect.Request[memoryv1.GetNamespaceRequest]) (*connect.Response[memoryv1.GetNamespaceResponse], error) {
	dl, ok := ctx.Deadline()
	if !ok {
		return nil, errors.New("no deadline")
	}
	d.got.Store(int64(time.Until(dl)))
	return connect.NewResponse(&memoryv1.GetNamespaceResponse{}), nil
}

func TestGracefulShutdownLetsStreamsFinish(t *testing.T) {
	t.Parallel()
	srv, _, ag := start(t, rpcserver.Config{ShutdownGrace: 5 * time.Second})
	c := agentv1connect.NewAgentServiceClient(rpcservertest.HTTPClient(), srv.URL, connect.WithGRPC())
	stream, err := c.SynthesizeSpeech(context.Background(), connect.NewRequest(&agentv1.SynthesizeSpeechRequest{Text: "hello"}))
	if err != nil {
		t.Fatal(err)
	}
	<-ag.started
	stopped := make(chan struct{})
	go func() { srv.Stop(); close(stopped) }()

	var chunks int
	for stream.Receive() {
		chunks++
	}
	if err := stream.Err(); err != nil || chunks != 5 {
		t.Fatalf("stream during shutdown: %d chunks, err %v; want all 5 and no error", chunks, err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop after the stream finished")
	}
	mc := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL)
	if _, err := mc.GetNamespace(context.Background(), connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("call after shutdown: %v, want Unavailable", err)
	}
}

func TestLoadBalancingFollowsHealth(t *testing.T) {
	t.Parallel()
	memA, memB := &fakeMemory{id: "a"}, &fakeMemory{id: "b"}
	svc := func(m *fakeMemory) rpcserver.Service {
		return rpcserver.Service{Name: memoryv1connect.MemoryServiceName, Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(m, o...)
		}}
	}
	a := rpcservertest.Start(t, rpcserver.Config{}, nil, svc(memA))
	b := rpcservertest.Start(t, rpcserver.Config{}, nil, svc(memB))
	conn, err := rpcclient.Dial(rpcclient.Config{Target: a.Addr + "," + b.Addr, Service: memoryv1.MemoryService_ServiceDesc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := memoryv1.NewMemoryServiceClient(conn)
	ctx := context.Background()

	// count sends n calls and returns how many landed on each server.
	count := func(n int) (int64, int64) {
		a0, b0 := memA.calls.Load(), memB.calls.Load()
		for range n {
			if _, err := client.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "docs"}); err != nil {
				t.Fatalf("GetNamespace: %v", err)
			}
		}
		return memA.calls.Load() - a0, memB.calls.Load() - b0
	}
	// Wait until both backends are connected and healthy, then expect an even spread.
	waitFor(t, 5*time.Second, func() bool { na, nb := count(10); return na > 0 && nb > 0 })
	if na, nb := count(40); na != 20 || nb != 20 {
		t.Errorf("round robin: a=%d b=%d, want 20/20", na, nb)
	}

	a.SetServing(false)
	time.Sleep(time.Second)
	if na, nb := count(20); na != 0 || nb != 20 {
		t.Errorf("a NOT_SERVING for 1s: a=%d b=%d, want 0/20", na, nb)
	}

	a.SetServing(true)
	waitFor(t, 5*time.Second, func() bool { na, _ := count(10); return na > 0 })
}

func TestRequiredRolesAreDeclaredForEveryRPC(t *testing.T) {
	t.Parallel()
	for _, fd := range []protoreflect.FileDescriptor{memoryv1.File_loom_memory_v1_memory_proto, agentv1.File_loom_agent_v1_agent_proto, orchestratorv1.File_loom_orchestrator_v1_orchestrator_proto} {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				proc := "/" + string(svc.FullName()) + "/" + string(m.Name())
				if rpcserver.RequiredRole(proc) == authv1.Role_ROLE_UNSPECIFIED {
					t.Errorf("%s declares no (loom.auth.v1.required_role)", proc)
				}
			}
		}
	}
	if rpcserver.Allowed(principal.Principal{Tenant: "t", Roles: []string{"admin"}}, authv1.Role_ROLE_UNSPECIFIED) {
		t.Error("an RPC without a declared role must be denied to everyone")
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAuthenticatorRunsBeforeHandlers(t *testing.T) {
	t.Parallel()
	mem := &fakeMemory{id: "a"}
	auth := func(r *http.Request) (principal.Principal, error) {
		if r.Header.Get("Authorization") != "Bearer good" {
			return principal.Principal{}, errors.New("missing or invalid credentials")
		}
		return principal.Principal{Tenant: "t1", Subject: "s", Roles: []string{"reader"}}, nil
	}
	srv := rpcservertest.Start(t, rpcserver.Config{}, auth, rpcserver.Service{Name: memoryv1connect.MemoryServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(mem, o...)
		}})
	for _, opt := range []connect.ClientOption{connect.WithGRPC(), connect.WithGRPCWeb(), connect.WithProtoJSON()} {
		c := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL, opt)
		_, err := c.GetNamespace(context.Background(), connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("no credentials: %v, want Unauthenticated", err)
		}
		req := connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})
		req.Header().Set("Authorization", "Bearer good")
		res, err := c.GetNamespace(context.Background(), req)
		if err != nil || res.Msg.GetNamespace().GetDescription() != "a/t1" {
			t.Errorf("good credentials: %v %v", res, err)
		}
		// A reader may not call an RPC the contract reserves for writers.
		up := connect.NewRequest(&memoryv1.UpsertRequest{Namespace: "docs", Records: []*memoryv1.Record{{Text: "x"}}})
		up.Header().Set("Authorization", "Bearer good")
		if _, err := c.Upsert(context.Background(), up); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("reader calling Upsert: %v, want PermissionDenied", err)
		}
	}
	if mem.calls.Load() != 3 {
		t.Errorf("handler ran %d times, want 3 (only authenticated calls)", mem.calls.Load())
	}
}
