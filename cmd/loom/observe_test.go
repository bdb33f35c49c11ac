package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// TestDebugListenServesPprofOnLoopbackOnly starts `loom serve --debug-listen PORT`: pprof answers on
// 127.0.0.1:PORT and not on the public port; /metrics has a help text for every metric, the gRPC-convention RPC
// metrics and the breaker states.
func TestDebugListenServesPprofOnLoopbackOnly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	p := startLoom(t, "--debug-listen", port)

	if code, body := get(t, "http://127.0.0.1:"+port+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("debug listener /debug/pprof/: %d\n%.200s", code, body)
	}
	if code, body := get(t, "http://127.0.0.1:"+port+"/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("debug listener goroutine profile: %d\n%.200s", code, body)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		if code, body := get(t, "http://"+p.addr+path); code == http.StatusOK && strings.Contains(body, "goroutine") {
			t.Errorf("public port serves %s", path)
		}
	}
	if !strings.Contains(p.logs.String(), "127.0.0.1:"+port) {
		t.Errorf("no log line names the debug listener 127.0.0.1:%s", port)
	}

	// One call, so the per-RPC series exist.
	conn := dialGRPC(t, p.addr)
	if _, err := memoryv1.NewMemoryServiceClient(conn).ListNamespaces(context.Background(), &memoryv1.ListNamespacesRequest{}); err != nil {
		t.Fatal(err)
	}
	_, metrics := get(t, "http://"+p.addr+"/metrics")
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="ListNamespaces",grpc_service="loom.memory.v1.MemoryService",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_bucket{grpc_method="ListNamespaces"`,
		`loom_rpc_requests_total{code="ok",procedure="/loom.memory.v1.MemoryService/ListNamespaces"} 1`,
		`loom_rpcclient_breaker_state{target=`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	help := map[string]bool{}
	for line := range strings.Lines(metrics) {
		if name, text, ok := strings.Cut(strings.TrimPrefix(line, "# HELP "), " "); ok && strings.HasPrefix(line, "# HELP ") && strings.TrimSpace(text) != "" {
			help[name] = true
		}
	}
	for line := range strings.Lines(metrics) {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if name, _, _ := strings.Cut(rest, " "); !help[name] {
				t.Errorf("metric %s has no help text", name)
			}
		}
	}
}

// collector is a fake OpenTelemetry Collector: an OTLP/HTTP (protobuf) receiver keeping every span.
type collector struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	srv   *httptest.Server
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				c.spans = append(c.spans, ss.GetSpans()...)
			}
		}
		c.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) all() []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.spans)
}

// TestRunStreamTraceThroughGateway runs one RunStream of an agent with memory through a gateway process in
// front of a backend process, both exporting spans over OTLP/HTTP to a fake collector as OTEL_* configures
// them, and checks that it makes one trace: gateway -> agent -> memory (over the service client) -> database
// (with Postgres). It logs the trace's span names and durations.
func TestRunStreamTraceThroughGateway(t *testing.T) {
	b := bins(t)
	col := newCollector(t)
	dataDir := t.TempDir()
	var dbArgs []string
	if os.Getenv(sqldbtest.EnvURL) != "" || os.Getenv("CI") != "" {
		dbArgs = []string{"--database-url", sqldbtest.PostgresURL(t)}
	}
	env := append(os.Environ(),
		"LOOM_SERVICE_TOKEN_KEY="+newServiceTokenKey(),
		"OTEL_EXPORTER_OTLP_ENDPOINT="+col.srv.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	)
	out, err := exec.Command(b["loom"], append([]string{"keys", "create", "--data-dir", dataDir, "--tenant", "tenant-a", "--name", "k", "--roles", "writer"}, dbArgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("loom keys create: %v\n%s", err, out)
	}
	_, key, _ := strings.Cut(string(out), "secret: ")
	key, _, _ = strings.Cut(key, "\n")
	backend := startLoomWith(t, dataDir, env, append([]string{"--auth", "required"}, dbArgs...)...)
	gw := startLoomWith(t, dataDir, env, append([]string{"--auth", "required", "--services", "gateway",
		"--gateway-memory", backend.addr, "--gateway-agent", backend.addr}, dbArgs...)...)

	conn := dialGRPC(t, gw.addr)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+strings.TrimSpace(key))
	ag := seedHelperAgent(ctx, t, conn)
	stream, err := ag.RunStream(ctx, &agentv1.RunStreamRequest{Agent: "helper", Input: "where did the cat sit"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}

	const runStream = "loom.agent.v1.AgentService/RunStream"
	var trace []*tracepb.Span
	deadline := time.Now().Add(20 * time.Second)
	for {
		spans := col.all()
		var root *tracepb.Span
		for _, s := range spans {
			if s.GetName() == runStream && len(s.GetParentSpanId()) == 0 {
				root = s // the gateway's server span: the caller sent no trace context
			}
		}
		trace = trace[:0]
		if root != nil {
			for _, s := range spans {
				if string(s.GetTraceId()) == string(root.GetTraceId()) {
					trace = append(trace, s)
				}
			}
		}
		if hasChain(trace, runStream) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete RunStream trace exported; trace so far:\n%s\nall spans: %d", describe(trace), len(spans))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("RunStream trace:\n%s", describe(trace))
	if len(dbArgs) > 0 && !slices.ContainsFunc(trace, func(s *tracepb.Span) bool {
		return s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT && strings.HasPrefix(s.GetName(), "SELECT")
	}) {
		t.Errorf("no database span in the RunStream trace")
	}
	// The model call and the memory search have spans of their own, with the GenAI and search attributes.
	attrs := func(sp *tracepb.Span) map[string]string {
		m := map[string]string{}
		for _, kv := range sp.GetAttributes() {
			v := kv.GetValue()
			m[kv.GetKey()] = v.GetStringValue()
			if m[kv.GetKey()] == "" {
				m[kv.GetKey()] = strconv.FormatInt(v.GetIntValue(), 10)
			}
		}
		return m
	}
	var sawModel, sawSearch bool
	for _, sp := range trace {
		a := attrs(sp)
		if strings.HasPrefix(sp.GetName(), "chat ") && a["gen_ai.system"] == "loom.sim" && a["gen_ai.usage.input_tokens"] != "" {
			sawModel = true
		}
		if sp.GetName() == "memory.search" && a["loom.memory.namespace"] != "" {
			sawSearch = true
		}
	}
	if !sawModel || !sawSearch {
		t.Errorf("model call span %v, memory search span %v; want both in the RunStream trace", sawModel, sawSearch)
	}
	if !strings.Contains(backend.logs.String(), "trace_id="+hex.EncodeToString(trace[0].GetTraceId())) {
		t.Errorf("the backend's log lines of the traced call carry no trace_id")
	}
}

// hasChain reports whether spans hold gateway server -> gateway client -> agent server -> memory client ->
// memory server.
func hasChain(spans []*tracepb.Span, runStream string) bool {
	byID := map[string]*tracepb.Span{}
	for _, s := range spans {
		byID[string(s.GetSpanId())] = s
	}
	for _, s := range spans {
		if s.GetKind() != tracepb.Span_SPAN_KIND_SERVER || !strings.HasPrefix(s.GetName(), "loom.memory.v1.MemoryService/Search") {
			continue
		}
		want := []struct {
			kind tracepb.Span_SpanKind
			name string
		}{
			{tracepb.Span_SPAN_KIND_CLIENT, "loom.memory.v1.MemoryService/Search"},
			{tracepb.Span_SPAN_KIND_SERVER, runStream},
			{tracepb.Span_SPAN_KIND_CLIENT, "proxy " + runStream},
			{tracepb.Span_SPAN_KIND_SERVER, runStream},
		}
		cur := s
		ok := true
		for _, w := range want {
			cur = byID[string(cur.GetParentSpanId())]
			if cur == nil || cur.GetKind() != w.kind || cur.GetName() != w.name {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// describe prints spans as a tree with their kinds and durations.
func describe(spans []*tracepb.Span) string {
	children := map[string][]*tracepb.Span{}
	ids := map[string]bool{}
	for _, s := range spans {
		ids[string(s.GetSpanId())] = true
	}
	var roots []*tracepb.Span
	for _, s := range spans {
		if p := string(s.GetParentSpanId()); p != "" && ids[p] {
			children[p] = append(children[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	var b strings.Builder
	var walk func(s *tracepb.Span, depth int)
	walk = func(s *tracepb.Span, depth int) {
		d := time.Duration(s.GetEndTimeUnixNano() - s.GetStartTimeUnixNano())
		fmt.Fprintf(&b, "%s%s [%s] %s\n", strings.Repeat("  ", depth), s.GetName(), strings.TrimPrefix(s.GetKind().String(), "SPAN_KIND_"), d.Round(10*time.Microsecond))
		kids := children[string(s.GetSpanId())]
		sort.Slice(kids, func(i, j int) bool { return kids[i].GetStartTimeUnixNano() < kids[j].GetStartTimeUnixNano() })
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

// pgProxy forwards TCP connections to a Postgres address until cut, which closes the listener and every
// connection: the database becomes unreachable for whoever connects through it.
type pgProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newPGProxy(t *testing.T, upstream string) *pgProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pgProxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(p.cut)
	return p
}

func (p *pgProxy) cut() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestPrometheusFiresDatabaseUnreachable runs a real Prometheus (Debian's package) with alerts.yml scraping a
// live `loom serve` on Postgres reached through a proxy, cuts the proxy, and waits for LoomDatabaseUnreachable
// to fire (its for: 1m makes this test take a little over a minute).
func TestPrometheusFiresDatabaseUnreachable(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not found: .ci/packages.sh installs Debian's prometheus package")
		}
		t.Skip("prometheus not found (apt-get install prometheus)")
	}
	dbURL := sqldbtest.PostgresURL(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newPGProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	p := startLoom(t, "--database-url", u.String(), "--services", "memory")

	rules, err := filepath.Abs("../../deploy/observability/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: loom
    static_configs: [{targets: [%q]}]
`, rules, p.addr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	promAddr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(prom, "--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr)
	logs := &logtest.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus logs:\n%s", logs.String())
		}
	})

	// alertState returns the state of LoomDatabaseUnreachable ("" when inactive) and whether loom_db_up is 1.
	alertState := func() (state string, up bool) {
		res, err := http.Get("http://" + promAddr + "/api/v1/alerts")
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if i := strings.Index(string(body), `"alertname":"LoomDatabaseUnreachable"`); i >= 0 {
				rest := string(body)[i:]
				if j := strings.Index(rest, `"state":"`); j >= 0 {
					state, _, _ = strings.Cut(rest[j+len(`"state":"`):], `"`)
				}
			}
		}
		res, err = http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(`loom_db_up{job="loom"}`))
		if err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			up = strings.Contains(string(body), `"1"]`)
		}
		return state, up
	}
	wait := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	wait("Prometheus to scrape loom_db_up 1", 60*time.Second, func() bool { _, up := alertState(); return up })
	if s, _ := alertState(); s != "" {
		t.Fatalf("LoomDatabaseUnreachable is %s while the database answers", s)
	}
	cut := time.Now()
	proxy.cut()
	wait("LoomDatabaseUnreachable to be pending", 30*time.Second, func() bool { s, _ := alertState(); return s == "pending" })
	wait("LoomDatabaseUnreachable to fire", 2*time.Minute, func() bool { s, _ := alertState(); return s == "firing" })
	t.Logf("LoomDatabaseUnreachable fired %s after the database became unreachable", time.Since(cut).Round(time.Second))
}

func TestObservabilityFlags(t *testing.T) {
	t.Parallel()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_HEADERS": "authorization=canary-secret"}
	cfg, err := parseServe([]string{"--debug-listen", "6060", "--log-rpc-sample", "0.25", "--log-slow", "250ms"}, func(k string) string { return env[k] }, devnull)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DebugListen != "127.0.0.1:6060" || cfg.LogRPCSample != 0.25 || cfg.LogSlow != 250*time.Millisecond {
		t.Errorf("debug_listen %q, log_rpc_sample %v, log_slow %v", cfg.DebugListen, cfg.LogRPCSample, cfg.LogSlow)
	}
	if cfg.OTel.Get("OTEL_EXPORTER_OTLP_ENDPOINT") != "http://collector:4318" || cfg.OTel.Get("OTEL_EXPORTER_OTLP_HEADERS") != "" {
		t.Errorf("OTEL_* read: %v (headers are the exporter's own business)", cfg.OTel)
	}
	if cfg, _ := parseServe(nil, func(string) string { return "" }, devnull); cfg.DebugListen != "" || cfg.LogSlow != time.Second {
		t.Errorf("defaults: debug_listen %q (want off), log_slow %v", cfg.DebugListen, cfg.LogSlow)
	}
	for _, bad := range []string{"2", "-0.1", "some"} {
		if _, err := parseServe([]string{"--log-rpc-sample", bad}, func(string) string { return "" }, devnull); err == nil || !strings.Contains(err.Error(), "--log-rpc-sample") {
			t.Errorf("--log-rpc-sample %s: %v", bad, err)
		}
	}
}
