package gateway_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loom-dev/loom/gateway"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/internal/telemetry"
)

// dbMemory answers Get after a query on Postgres, made with the call's context.
type dbMemory struct {
	memoryv1connect.UnimplementedMemoryServiceHandler
	db *sqldb.DB
}

func (f *dbMemory) Get(ctx context.Context, req *connect.Request[memoryv1.GetRequest]) (*connect.Response[memoryv1.GetResponse], error) {
	var n int
	if err := f.db.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return connect.NewResponse(&memoryv1.GetResponse{}), nil
}

// TestTraceThroughGateway sends a call carrying the caller's traceparent through a traced gateway to a traced
// backend that queries Postgres, over the real transport, and checks the spans form one trace: the gateway's
// server span continues the caller's, the gateway's client span (the backend round trip) is its child, the
// backend's server span is the client span's child, and the database span is the backend span's child.
func TestTraceThroughGateway(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	db, err := sqldb.Open(context.Background(), sqldbtest.PostgresURL(t), sqldb.Options{TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	_, minter, verifier := serviceTokens(t, memoryv1connect.MemoryServiceName)
	backend := rpcservertest.Start(t, rpcserver.Config{TracerProvider: tp}, backendAuth(verifier), rpcserver.Service{
		Name: memoryv1connect.MemoryServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(&dbMemory{db: db}, opts...)
		},
	})
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	proxy, err := gateway.New(logger, gateway.Config{
		Backends:       map[string]string{memoryv1connect.MemoryServiceName: backend.Addr},
		TracerProvider: tp,
	}, minter)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	gw := rpcservertest.Start(t, rpcserver.Config{Fallback: proxy, TracerProvider: tp}, gatewayAuth)
	waitHealthy(t, proxy, memoryv1connect.MemoryServiceName, 1)

	// The caller's own trace: a span in a provider of its own, whose context travels as traceparent.
	callerTP := sdktrace.NewTracerProvider()
	ctx, callerSpan := callerTP.Tracer("caller").Start(context.Background(), "caller")
	client := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), gw.URL, connect.WithGRPC())
	req := authed(&memoryv1.GetRequest{Namespace: "docs", Ids: []string{"a"}})
	for k, v := range telemetry.Inject(ctx) {
		req.Header().Set(k, v)
	}
	if _, err := client.Get(ctx, req); err != nil {
		t.Fatal(err)
	}
	callerSpan.End()
	rec.ForceFlush(context.Background())

	spans := rec.Ended()
	byName := map[string]sdktrace.ReadOnlySpan{}
	var names []string
	for _, s := range spans {
		names = append(names, s.Name()+"("+s.SpanKind().String()+")")
		if s.SpanContext().TraceID() != callerSpan.SpanContext().TraceID() {
			t.Errorf("span %q is in trace %s, want the caller's %s", s.Name(), s.SpanContext().TraceID(), callerSpan.SpanContext().TraceID())
		}
		if _, dup := byName[s.Name()]; !dup || s.SpanKind() == trace.SpanKindServer {
			byName[s.Name()] = s
		}
	}
	t.Logf("spans: %s", strings.Join(names, ", "))
	const procedure = "loom.memory.v1.MemoryService/Get"
	var gwServer, backendServer sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == procedure && s.SpanKind() == trace.SpanKindServer {
			if s.Parent().SpanID() == callerSpan.SpanContext().SpanID() {
				gwServer = s
			} else {
				backendServer = s
			}
		}
	}
	if gwServer == nil || backendServer == nil {
		t.Fatalf("want server spans %q on the gateway and the backend; got %v", procedure, names)
	}
	gwClient := byName["proxy "+procedure]
	if gwClient == nil || gwClient.SpanKind() != trace.SpanKindClient {
		t.Fatalf("no gateway client span %q; got %v", "proxy "+procedure, names)
	}
	if gwClient.Parent().SpanID() != gwServer.SpanContext().SpanID() {
		t.Errorf("gateway client span's parent is %s, want the gateway server span %s", gwClient.Parent().SpanID(), gwServer.SpanContext().SpanID())
	}
	if backendServer.Parent().SpanID() != gwClient.SpanContext().SpanID() {
		t.Errorf("backend server span's parent is %s, want the gateway client span %s", backendServer.Parent().SpanID(), gwClient.SpanContext().SpanID())
	}
	var dbSpans int
	for _, s := range spans {
		if s.InstrumentationScope().Name == "github.com/exaring/otelpgx" && s.Parent().SpanID() == backendServer.SpanContext().SpanID() {
			dbSpans++
		}
	}
	if dbSpans == 0 {
		t.Errorf("no database span is a child of the backend server span; got %v", names)
	}
}
