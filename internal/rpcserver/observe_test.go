package rpcserver_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/telemetry"
)

// serveWith serves services on an httptest server with a logger writing to logs at level, through the
// telemetry log handler, as `loom serve` does.
func serveWith(t *testing.T, cfg rpcserver.Config, auth rpcserver.Authenticator, level slog.Level) (*httptest.Server, *logtest.Buffer) {
	t.Helper()
	logs := &logtest.Buffer{}
	logger := slog.New(telemetry.LogHandler(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})))
	mem := &fakeMemory{id: "a"}
	ag := &fakeAgent{started: make(chan struct{})}
	srv, err := rpcserver.New(logger, cfg, auth, services(mem, ag)...)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return hs, logs
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// TestRefusedCallsAreCountedAndLogged checks that calls refused before the interceptors (unauthenticated, rate
// limited) are in the request counters with their codes, in loom_rpc_refused_total by reason, and in the log.
func TestRefusedCallsAreCountedAndLogged(t *testing.T) {
	t.Parallel()
	auth := func(r *http.Request) (principal.Principal, error) {
		if r.Header.Get("Authorization") == "" {
			return principal.Principal{}, errors.New("no credentials")
		}
		return principal.Principal{Tenant: "t", Subject: "s", Roles: []string{"admin"}}, nil
	}
	hs, logs := serveWith(t, rpcserver.Config{RateLimit: 0.001, RateBurst: 1}, auth, slog.LevelInfo)
	client := memoryv1connect.NewMemoryServiceClient(hs.Client(), hs.URL)
	ctx := context.Background()

	if _, err := client.GetNamespace(ctx, connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("without credentials: %v, want Unauthenticated", err)
	}
	for i, want := range []connect.Code{0, connect.CodeResourceExhausted} {
		req := connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})
		req.Header().Set("Authorization", "Bearer x")
		_, err := client.GetNamespace(ctx, req)
		if (want == 0) != (err == nil) || (err != nil && connect.CodeOf(err) != want) {
			t.Fatalf("call %d: %v, want code %v", i, err, want)
		}
	}

	m := scrape(t, hs.URL)
	for _, want := range []string{
		`loom_rpc_refused_total{code="unauthenticated",reason="unauthenticated"} 1`,
		`loom_rpc_refused_total{code="resource_exhausted",reason="rate_limit"} 1`,
		`grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="GetNamespace",grpc_service="loom.memory.v1.MemoryService",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="ResourceExhausted",grpc_method="GetNamespace",grpc_service="loom.memory.v1.MemoryService",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="GetNamespace",grpc_service="loom.memory.v1.MemoryService",grpc_type="unary"} 1`,
		`grpc_server_started_total{grpc_method="GetNamespace",grpc_service="loom.memory.v1.MemoryService",grpc_type="unary"} 3`,
		`loom_rpc_requests_total{code="unauthenticated",procedure="/loom.memory.v1.MemoryService/GetNamespace"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	var refused int
	for _, l := range logs.Lines() {
		if strings.Contains(l, `msg="rpc refused"`) {
			refused++
		}
	}
	if refused != 2 {
		t.Errorf("%d refusal log lines, want 2:\n%s", refused, strings.Join(logs.Lines(), "\n"))
	}

	// A hostile path does not become a label.
	res, err := hs.Client().Post(hs.URL+"/evil.Service/"+strings.Repeat("x", 20), "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if m := scrape(t, hs.URL); strings.Contains(m, "evil") || !strings.Contains(m, `grpc_service="unknown"`) {
		t.Errorf("unknown procedure not folded into \"unknown\"")
	}
}

// TestStreamMessagesAreCounted checks grpc_server_msg_sent_total for a server stream.
func TestStreamMessagesAreCounted(t *testing.T) {
	t.Parallel()
	hs, _ := serveWith(t, rpcserver.Config{}, nil, slog.LevelInfo)
	client := agentv1connect.NewAgentServiceClient(hs.Client(), hs.URL)
	stream, err := client.SynthesizeSpeech(context.Background(), connect.NewRequest(&agentv1.SynthesizeSpeechRequest{Text: "hi"}))
	if err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, hs.URL)
	for _, want := range []string{
		`grpc_server_msg_sent_total{grpc_method="SynthesizeSpeech",grpc_service="loom.agent.v1.AgentService",grpc_type="server_stream"} 5`,
		`grpc_server_msg_received_total{grpc_method="SynthesizeSpeech",grpc_service="loom.agent.v1.AgentService",grpc_type="server_stream"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestLogPolicy checks which calls are logged at which level: successes at debug (none at info by default, all
// with LogSampleRate 1), failures always, slow calls at warn.
func TestLogPolicy(t *testing.T) {
	t.Parallel()
	count := func(lines []string, sub ...string) int {
		n := 0
	next:
		for _, l := range lines {
			for _, s := range sub {
				if !strings.Contains(l, s) {
					continue next
				}
			}
			n++
		}
		return n
	}
	call := func(t *testing.T, hs *httptest.Server) {
		client := memoryv1connect.NewMemoryServiceClient(hs.Client(), hs.URL)
		for range 3 {
			if _, err := client.GetNamespace(context.Background(), connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := client.GetNamespace(context.Background(), connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "Not Valid"})); err == nil {
			t.Fatal("invalid request succeeded")
		}
	}
	for _, tc := range []struct {
		name            string
		cfg             rpcserver.Config
		level           slog.Level
		wantOK, wantErr int
		wantLevel       string
	}{
		{name: "default at info", cfg: rpcserver.Config{}, level: slog.LevelInfo, wantOK: 0, wantErr: 1, wantLevel: "level=INFO"},
		{name: "default at debug", cfg: rpcserver.Config{}, level: slog.LevelDebug, wantOK: 3, wantErr: 1, wantLevel: "level=DEBUG"},
		{name: "sampled", cfg: rpcserver.Config{LogSampleRate: 1}, level: slog.LevelInfo, wantOK: 3, wantErr: 1, wantLevel: "level=INFO"},
		{name: "slow", cfg: rpcserver.Config{SlowCall: 1}, level: slog.LevelWarn, wantOK: 3, wantErr: 1, wantLevel: "slow=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hs, logs := serveWith(t, tc.cfg, nil, tc.level)
			call(t, hs)
			lines := logs.Lines()
			if got := count(lines, `msg=rpc `, "code=ok", tc.wantLevel); got != tc.wantOK {
				t.Errorf("%d successful calls logged with %s, want %d:\n%s", got, tc.wantLevel, tc.wantOK, strings.Join(lines, "\n"))
			}
			if got := count(lines, `msg=rpc `, "code=invalid_argument"); got != tc.wantErr {
				t.Errorf("%d failed calls logged, want %d", got, tc.wantErr)
			}
		})
	}
}

// TestTracingSpansAndLogIDs checks the server span of a traced call continues the caller's trace and that the
// call's log line carries the span's trace and span ids; without a tracer provider there is no span.
func TestTracingSpansAndLogIDs(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	hs, logs := serveWith(t, rpcserver.Config{TracerProvider: tp}, nil, slog.LevelInfo)

	ctx, parent := sdktrace.NewTracerProvider().Tracer("caller").Start(context.Background(), "caller")
	req := connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "Not Valid"})
	for k, v := range telemetry.Inject(ctx) {
		req.Header().Set(k, v)
	}
	client := memoryv1connect.NewMemoryServiceClient(hs.Client(), hs.URL)
	if _, err := client.GetNamespace(ctx, req); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name() != "loom.memory.v1.MemoryService/GetNamespace" || s.Parent().SpanID() != parent.SpanContext().SpanID() ||
		s.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("span %q parent %s trace %s; want the RPC's name, child of the caller's span %s", s.Name(), s.Parent().SpanID(), s.SpanContext().TraceID(), parent.SpanContext().SpanID())
	}
	want := "trace_id=" + s.SpanContext().TraceID().String() + " span_id=" + s.SpanContext().SpanID().String()
	found := false
	for _, l := range logs.Lines() {
		if strings.Contains(l, "msg=rpc ") && strings.Contains(l, want) {
			found = true
		}
	}
	if !found {
		t.Errorf("no rpc log line with %s:\n%s", want, strings.Join(logs.Lines(), "\n"))
	}
}
