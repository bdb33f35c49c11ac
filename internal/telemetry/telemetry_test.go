package telemetry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/internal/telemetry"
)

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestSetupIsOffUnlessConfigured(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		env     map[string]string
		enabled bool
		wantErr string
	}{
		{name: "nothing set", env: nil},
		{name: "disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
		{name: "exporter none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}},
		{name: "sampler alone", env: map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, enabled: true},
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, enabled: true},
		{name: "otlp without endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, enabled: true},
		{name: "bad exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: "OTEL_TRACES_EXPORTER"},
		{name: "bad protocol", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{name: "bad ratio", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, wantErr: "OTEL_TRACES_SAMPLER_ARG"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tr, err := telemetry.Setup(context.Background(), env(tc.env), "loom", "test")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Shutdown(context.Background())
			if tr.Enabled() != tc.enabled {
				t.Errorf("enabled %v, want %v", tr.Enabled(), tc.enabled)
			}
		})
	}
}

func TestSampler(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"":                         "parentbased_always_on",
		"always_off":               "always_off",
		"parentbased_traceidratio": "parentbased_traceidratio(0.25)",
	} {
		_, desc, err := telemetry.Sampler(name, "0.25")
		if err != nil || desc != want {
			t.Errorf("Sampler(%q): %q, %v; want %q", name, desc, err, want)
		}
	}
	if _, _, err := telemetry.Sampler("sometimes", ""); err == nil {
		t.Error("unknown sampler accepted")
	}
}

// TestSetupExportsOverOTLPHTTP configures tracing as an operator would, with OTEL_EXPORTER_OTLP_ENDPOINT, and
// checks that a span reaches the endpoint's /v1/traces when tracing shuts down.
func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	t.Parallel()
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
			posts.Add(1)
		}
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	tr, err := telemetry.Setup(context.Background(), env(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL, "OTEL_SERVICE_NAME": "loom-test",
	}), "loom", "test")
	if err != nil {
		t.Fatal(err)
	}
	if tr.Exporter != "otlp/http/protobuf" {
		t.Errorf("exporter %q", tr.Exporter)
	}
	_, span := tr.TracerProvider.Tracer("test").Start(context.Background(), "op")
	span.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if posts.Load() == 0 {
		t.Error("no spans exported to /v1/traces")
	}
}

func recorded(t *testing.T) (*tracetest.SpanRecorder, context.Context, trace.Span) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, parent := tp.Tracer("test").Start(context.Background(), "rpc")
	return rec, ctx, parent
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func TestModelCallSpanFollowsGenAIConventions(t *testing.T) {
	t.Parallel()
	rec, ctx, parent := recorded(t)
	_, call := telemetry.StartModelCall(ctx, "openai", "gpt-4o-mini")
	call.SetResponseModel("gpt-4o-mini-2024-07-18")
	call.End(120, 34, nil)
	_, failed := telemetry.StartModelCall(ctx, "gcp.gemini", "gemini-2.5-flash")
	failed.End(-1, -1, connect.NewError(connect.CodeUnavailable, errors.New("provider down")))
	parent.End()

	spans := rec.Ended()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	s := spans[0]
	a := attrs(s)
	if s.Name() != "chat gpt-4o-mini" || s.SpanKind() != trace.SpanKindClient || s.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("span %q kind %v parent %v", s.Name(), s.SpanKind(), s.Parent().SpanID())
	}
	for k, want := range map[attribute.Key]any{
		"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.provider.name": "openai",
		"gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
		"gen_ai.usage.input_tokens": int64(120), "gen_ai.usage.output_tokens": int64(34),
	} {
		if got := a[k].AsInterface(); got != want {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}
	f := attrs(spans[1])
	if _, ok := f["gen_ai.usage.input_tokens"]; ok {
		t.Error("unknown token counts recorded")
	}
	if f["error.type"].AsString() != "unavailable" || spans[1].Status().Code.String() != "Error" {
		t.Errorf("failed call: error.type %q status %v", f["error.type"].AsString(), spans[1].Status())
	}
}

func TestMemorySearchSpan(t *testing.T) {
	t.Parallel()
	rec, ctx, parent := recorded(t)
	_, s := telemetry.StartMemorySearch(ctx, "docs", "hnsw", 10)
	s.End(7, nil)
	parent.End()
	span := rec.Ended()[0]
	a := attrs(span)
	if span.Name() != "memory.search" || a["loom.memory.namespace"].AsString() != "docs" || a["loom.memory.mode"].AsString() != "hnsw" ||
		a["loom.memory.k"].AsInt64() != 10 || a["loom.memory.results"].AsInt64() != 7 {
		t.Errorf("span %q attributes %v", span.Name(), a)
	}
}

func TestErrorTypeIsTheConnectCodeAnywhereInTheChain(t *testing.T) {
	t.Parallel()
	unavailable := connect.NewError(connect.CodeUnavailable, errors.New("down"))
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{name: "connect error", err: connect.NewError(connect.CodeNotFound, nil), want: "not_found"},
		{name: "wrapped", err: fmt.Errorf("search: %w", unavailable), want: "unavailable"},
		{name: "joined", err: errors.Join(errors.New("first"), unavailable), want: "unavailable"},
		{name: "plain", err: errors.New("plain"), want: "_OTHER"},
		{name: "wrapped plain", err: fmt.Errorf("search: %w", io.EOF), want: "_OTHER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec, ctx, _ := recorded(t)
			_, s := telemetry.StartMemorySearch(ctx, "docs", "exact", 1)
			s.End(0, tc.err)
			if got := attrs(rec.Ended()[0])["error.type"].AsString(); got != tc.want {
				t.Errorf("error.type = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHelpersAreNoOpsOutsideATrace(t *testing.T) {
	t.Parallel()
	ctx, call := telemetry.StartModelCall(context.Background(), "openai", "m")
	call.End(1, 1, nil)
	if trace.SpanFromContext(ctx).IsRecording() {
		t.Error("model call span records without a traced parent")
	}
	var nilCall *telemetry.ModelCall
	nilCall.End(1, 1, nil) // a nil span is valid
	if _, span := telemetry.StartSpan(context.Background(), nil, "step"); span.IsRecording() {
		t.Error("StartSpan with a nil provider records")
	}
}

func TestInjectExtractCarriesTheTraceToLaterWork(t *testing.T) {
	t.Parallel()
	rec, ctx, parent := recorded(t)
	stored := telemetry.Inject(ctx) // saved with a workflow run
	if stored["traceparent"] == "" {
		t.Fatalf("no traceparent in %v", stored)
	}
	parent.End()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	later := telemetry.Extract(context.Background(), stored) // a step, perhaps on another replica after a crash
	_, step := telemetry.StartSpan(later, tp, "step fetch")
	step.End()
	s := rec.Ended()[1]
	if s.SpanContext().TraceID() != parent.SpanContext().TraceID() || s.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("step span is not a child of the stored span")
	}
	if telemetry.Inject(context.Background()) != nil {
		t.Error("Inject without a span returned headers")
	}
}

func TestLogHandlerAddsTraceIDs(t *testing.T) {
	t.Parallel()
	_, ctx, parent := recorded(t)
	var buf bytes.Buffer
	logger := slog.New(telemetry.LogHandler(slog.NewTextHandler(&buf, nil))).With("service", "memory")
	logger.InfoContext(ctx, "traced")
	logger.InfoContext(context.Background(), "untraced")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	sc := parent.SpanContext()
	if !strings.Contains(lines[0], "trace_id="+sc.TraceID().String()) || !strings.Contains(lines[0], "span_id="+sc.SpanID().String()) || !strings.Contains(lines[0], "service=memory") {
		t.Errorf("traced line: %s", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("untraced line: %s", lines[1])
	}
}

func TestDebugAddr(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"": "", "6060": "127.0.0.1:6060", ":6060": "127.0.0.1:6060", "0.0.0.0:6060": "0.0.0.0:6060",
		"[::1]:6060": "[::1]:6060", "localhost:7000": "localhost:7000",
	} {
		if got := telemetry.DebugAddr(in); got != want {
			t.Errorf("DebugAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDebugHandlerServesPprof(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(telemetry.DebugHandler())
	defer srv.Close()
	res, err := http.Get(srv.URL + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "heap profile") {
		t.Errorf("heap profile: %d %.100s", res.StatusCode, body)
	}
}

func TestPoolCollector(t *testing.T) {
	t.Parallel()
	db, err := sqldb.Open(context.Background(), sqldbtest.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := telemetry.PoolCollector(map[string]*pgxpool.Pool{"primary": db.Pool})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 10 {
		t.Errorf("%d metrics, want 10", len(mfs))
	}
	for _, mf := range mfs {
		if mf.GetHelp() == "" {
			t.Errorf("%s has no help text", mf.GetName())
		}
		if mf.GetName() == "loom_db_up" && mf.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("loom_db_up = %v, want 1", mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
}
