// Package gateway is Loom's API gateway: a byte-level HTTP/2 reverse proxy that forwards Connect (unary and
// streaming, JSON and binary), gRPC and gRPC-Web calls to the service that serves them, without decoding a single
// message.
//
// The gateway is an rpcserver.Server with no services whose Config.Fallback is a [Proxy]: the server does CORS,
// load shedding, authentication and per-principal rate limiting, and the Proxy then
//
//   - routes "/pkg.Service/Method" to the backends configured for pkg.Service (Unimplemented if none is);
//   - balances round-robin over the backends whose grpc.health.v1 status for that service is SERVING, checked in
//     the background (Unavailable if none is);
//   - strips every header the client may not set for a backend (its own credentials, "X-Loom-*", forwarding
//     headers), rewrites X-Forwarded-* and sends "Authorization: Bearer <service token>" minted for the caller's
//     principal with the target service as audience;
//   - bounds the request body (ResourceExhausted beyond Config.MaxRequestBytes);
//   - streams responses as they arrive, trailers included, and cancels the backend call when the client goes away.
//
// Errors produced by the gateway itself are written in the caller's protocol (Connect, gRPC or gRPC-Web).
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/procedure"
	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/telemetry"
)

// Defaults of [Config].
const (
	DefaultMaxRequestBytes = 4 << 20
	DefaultHealthInterval  = 500 * time.Millisecond
	DefaultHealthTimeout   = time.Second
	DefaultResolveInterval = 10 * time.Second
)

// Config configures a [Proxy]. Zero values take the defaults documented per field.
type Config struct {
	// Backends maps a service's full name ("loom.memory.v1.MemoryService") to the target serving it: a
	// comma-separated static list "host1:port,host2:port" (a single "host:port" is a list of one), or
	// "dns:///host:port", re-resolved every ResolveInterval so that every address the name resolves to gets calls.
	// Backends speak cleartext HTTP/2 (h2c) unless TLS is set.
	Backends map[string]string
	// TLS, when set, is how the gateway dials backends: HTTPS with HTTP/2, trusting its roots and presenting
	// its client certificate (mutual TLS; see tlsfiles.Client).
	TLS *tls.Config
	// MaxRequestBytes bounds a request body as sent on the wire (for a streaming request, the whole stream).
	// Larger requests are refused with ResourceExhausted. Default 4 MiB.
	MaxRequestBytes int64
	// HealthInterval is the pause between two grpc.health.v1 checks of one backend. Default 500 ms.
	HealthInterval time.Duration
	// HealthTimeout bounds one health check; a backend that does not answer in time is unhealthy. Default 1 s.
	HealthTimeout time.Duration
	// ResolveInterval is how often "dns:///" targets are resolved again. Default 10 s.
	ResolveInterval time.Duration
	// TracerProvider, when set, traces every forwarded call: a server span continuing the caller's W3C trace
	// context (traceparent), and inside it a client span for the backend round trip (otelhttp), whose context
	// the backend receives, so one trace runs caller -> gateway -> backend. Nil means no tracing: the caller's
	// traceparent then reaches the backend untouched.
	TracerProvider trace.TracerProvider
	// LogSampleRate is the fraction of successful calls logged at info, in [0, 1]; the others are logged at
	// debug. Failed and slow calls are always logged.
	LogSampleRate float64
	// SlowCall is the duration from which a unary call is logged at warn whatever its outcome. Default 1 s;
	// negative turns it off.
	SlowCall time.Duration
}

func (c Config) withDefaults() Config {
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = DefaultHealthInterval
	}
	if c.HealthTimeout <= 0 {
		c.HealthTimeout = DefaultHealthTimeout
	}
	if c.ResolveInterval <= 0 {
		c.ResolveInterval = DefaultResolveInterval
	}
	if c.SlowCall == 0 {
		c.SlowCall = time.Second
	}
	return c
}

// Validate reports whether c is usable: at least one backend, full service names, and targets that parse.
func (c Config) Validate() error {
	if len(c.Backends) == 0 {
		return errors.New("gateway: no backends")
	}
	for service, target := range c.Backends {
		if service == "" || strings.ContainsAny(service, "/ ") || !strings.Contains(service, ".") {
			return fmt.Errorf("gateway: %q is not a full service name", service)
		}
		if _, err := rpcclient.ParseTarget(target); err != nil {
			return fmt.Errorf("gateway: backend of %s: %w", service, err)
		}
	}
	return nil
}

// Proxy forwards calls to backends. It is an http.Handler meant to be rpcserver.Config.Fallback, so every
// request it sees has been authenticated. Create it with [New] and stop its background health checks with
// [Proxy.Close]. It is safe for concurrent use.
type Proxy struct {
	logger   *slog.Logger
	minter   *authn.Minter
	maxBytes int64
	pools    map[string]*pool // by service; read-only after New
	rp       *httputil.ReverseProxy
	tr       *http.Transport
	tracer   trace.Tracer // nil when tracing is off
	sample   float64
	slow     time.Duration

	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ http.Handler = (*Proxy)(nil)

// New returns a proxy for cfg that signs calls with minter. It starts resolving targets and checking backends'
// health in the background, and does not block on the network: until a backend has been checked once it may
// receive calls if no checked backend is healthy.
func New(logger *slog.Logger, cfg Config, minter *authn.Minter) (*Proxy, error) {
	if logger == nil {
		return nil, errors.New("gateway: nil logger")
	}
	if minter == nil {
		return nil, errors.New("gateway: nil minter")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	tr := &http.Transport{
		Protocols:           new(http.Protocols),
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// A connection that stops answering pings is closed, so calls and health checks move on.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 10 * time.Second, PingTimeout: 5 * time.Second},
	}
	scheme := "http"
	if cfg.TLS != nil {
		tr.TLSClientConfig = cfg.TLS.Clone()
		tr.Protocols.SetHTTP2(true)
		scheme = "https"
	} else {
		tr.Protocols.SetUnencryptedHTTP2(true)
	}

	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		logger:   logger,
		minter:   minter,
		maxBytes: cfg.MaxRequestBytes,
		pools:    make(map[string]*pool, len(cfg.Backends)),
		tr:       tr,
		stop:     cancel,
		sample:   cfg.LogSampleRate,
		slow:     cfg.SlowCall,
	}
	var rt http.RoundTripper = tr
	if cfg.TracerProvider != nil {
		p.tracer = cfg.TracerProvider.Tracer("github.com/loom-dev/loom/gateway")
		rt = otelhttp.NewTransport(tr,
			otelhttp.WithTracerProvider(cfg.TracerProvider),
			otelhttp.WithPropagators(telemetry.Propagator()),
			otelhttp.WithMeterProvider(noopmetric.NewMeterProvider()),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "proxy " + strings.TrimPrefix(r.URL.Path, "/") }),
		)
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:       p.rewrite,
		Transport:     rt,
		FlushInterval: -1, // forward every stream message as it arrives
		ErrorHandler:  p.proxyError,
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	checker := &healthChecker{client: &http.Client{Transport: tr}, interval: cfg.HealthInterval, timeout: cfg.HealthTimeout}
	for service, target := range cfg.Backends {
		t, _ := rpcclient.ParseTarget(target) // validated above
		pl := newPool(logger, service, checker)
		pl.scheme = scheme
		p.pools[service] = pl
		if t.DNSHost != "" {
			p.wg.Go(func() { pl.resolveLoop(ctx, t.DNSHost, t.DNSPort, cfg.ResolveInterval, &p.wg) })
		} else {
			pl.setAddrs(ctx, t.Addrs, &p.wg)
		}
	}
	return p, nil
}

// Close stops health checking and resolution and closes idle backend connections. Calls in flight are not
// interrupted. Close is idempotent.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.stop()
		p.wg.Wait()
		p.tr.CloseIdleConnections()
	})
	return nil
}

// Healthy returns the addresses of service's backends that are SERVING, sorted; nil for an unknown service.
func (p *Proxy) Healthy(service string) []string {
	pl := p.pools[service]
	if pl == nil {
		return nil
	}
	var out []string
	for _, b := range pl.snapshot() {
		if b.state.Load() == stateHealthy {
			out = append(out, b.addr)
		}
	}
	return out
}

// route is what ServeHTTP decided for one call, handed to rewrite and proxyError through the request context.
type route struct {
	service string
	backend *backend
	token   string
	body    *limitedBody
}

type routeKey struct{}

// ServeHTTP forwards r to a healthy backend of the service named by its path.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	service, ok := serviceOf(r.URL.Path)
	pl := p.pools[service]
	if !ok || pl == nil {
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("unknown procedure %s", r.URL.Path)))
		return
	}
	who, ok := principal.FromContext(r.Context())
	if !ok {
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeUnauthenticated, errors.New("credentials required")))
		return
	}
	if r.ContentLength > p.maxBytes {
		rpcserver.WriteError(w, r, p.tooLarge())
		return
	}
	b := pl.pick()
	if b == nil {
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeUnavailable, fmt.Errorf("no healthy backend for %s", service)))
		return
	}
	token, err := p.minter.Mint(who, service)
	if err != nil {
		p.logger.ErrorContext(r.Context(), "mint service token", "service", service, "err", err)
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeInternal, errors.New("internal error")))
		return
	}
	rt := &route{service: service, backend: b, token: token}
	if r.Body != nil && r.Body != http.NoBody {
		rt.body = &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, p.maxBytes)}
		r.Body = rt.body
	}
	ctx := context.WithValue(r.Context(), routeKey{}, rt)
	var span trace.Span
	if p.tracer != nil {
		ctx, span = p.startSpan(ctx, r, service, b.addr)
	}
	r = r.WithContext(ctx)

	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		// ReverseProxy aborts with http.ErrAbortHandler when the client goes away mid-stream; log either way.
		grpcStatus := w.Header().Get("Grpc-Status")
		elapsed := time.Since(start)
		failed := sw.status >= 400 || (grpcStatus != "" && grpcStatus != "0")
		if span != nil {
			endSpan(span, sw.status, grpcStatus)
		}
		level := slog.LevelDebug
		slow := p.slow > 0 && elapsed >= p.slow && !isStream(r)
		switch {
		case failed || slow:
			level = slog.LevelWarn
		case p.sample > 0 && (p.sample >= 1 || rand.Float64() < p.sample):
			level = slog.LevelInfo
		}
		if !p.logger.Enabled(ctx, level) {
			return
		}
		p.logger.LogAttrs(ctx, level, "proxied",
			slog.String("procedure", r.URL.Path),
			slog.String("backend", b.addr),
			slog.Int("http_status", sw.status),
			slog.String("grpc_status", grpcStatus),
			slog.Duration("duration", elapsed),
			slog.Bool("slow", slow),
			slog.String("tenant", who.Tenant),
			slog.String("subject", who.Subject),
		)
	}()
	p.rp.ServeHTTP(sw, r)
}

// startSpan starts the gateway's server span for a call, a child of the caller's trace context if it sent one.
func (p *Proxy) startSpan(ctx context.Context, r *http.Request, service, backend string) (context.Context, trace.Span) {
	ctx = telemetry.Propagator().Extract(ctx, propagation.HeaderCarrier(r.Header))
	_, method, _ := procedure.Split(r.URL.Path)
	return p.tracer.Start(ctx, strings.TrimPrefix(r.URL.Path, "/"),
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("rpc.system", rpcSystem(r)),
			attribute.String("rpc.service", service),
			attribute.String("rpc.method", method),
			attribute.String("loom.gateway.backend", backend),
		))
}

// endSpan sets the span's status from the call's outcome and ends it. As for any server span, only the
// server's faults are errors, not the caller's mistakes.
func endSpan(span trace.Span, httpStatus int, grpcStatus string) {
	if grpcStatus != "" {
		span.SetAttributes(attribute.String("rpc.grpc.status_code", grpcStatus))
	}
	span.SetAttributes(attribute.Int("http.response.status_code", httpStatus))
	switch grpcStatus {
	case "2", "4", "12", "13", "14", "15": // Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss
		span.SetStatus(codes.Error, "grpc-status "+grpcStatus)
	default:
		if httpStatus >= 500 {
			span.SetStatus(codes.Error, http.StatusText(httpStatus))
		}
	}
	span.End()
}

// rpcSystem is the rpc.system attribute of a request: grpc for gRPC and gRPC-Web, connect_rpc otherwise.
func rpcSystem(r *http.Request) string {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return "grpc"
	}
	return "connect_rpc"
}

// isStream reports whether the call is a streaming one, by the contract; streams are long-lived by design and
// never "slow".
func isStream(r *http.Request) bool {
	md, ok := procedure.Method(r.URL.Path)
	return ok && (md.IsStreamingClient() || md.IsStreamingServer())
}

// rewrite prepares the outbound request: backend URL, no client credentials or internal headers, fresh
// X-Forwarded-* and the service token.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	rt := pr.In.Context().Value(routeKey{}).(*route)
	pr.SetURL(rt.backend.url)
	// Forward the decoded path as is: the backend routes on exactly the procedure the gateway routed on.
	pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, ""
	for name := range pr.Out.Header {
		if internalHeader(name) {
			delete(pr.Out.Header, name)
		}
	}
	pr.SetXForwarded()
	pr.Out.Header.Set("Authorization", "Bearer "+rt.token)
}

// internalHeader reports whether a client-sent header must not reach a backend: credentials (replaced by the
// service token), Loom's internal "X-Loom-*" headers, forwarding headers (rewritten by the gateway), and Origin:
// the gateway answers browsers' CORS itself, and a backend seeing Origin would add its own Access-Control
// headers, which browsers refuse in duplicate ("*, *").
func internalHeader(name string) bool {
	name = http.CanonicalHeaderKey(name)
	switch name {
	case "Authorization", "Proxy-Authorization", "X-Api-Key", "Cookie", "Forwarded", "X-Real-Ip", "Origin":
		return true
	}
	return strings.HasPrefix(name, "X-Loom-") || strings.HasPrefix(name, "X-Forwarded-")
}

// proxyError answers a call whose backend round trip failed before a response began.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	rt, _ := r.Context().Value(routeKey{}).(*route)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe) || (rt != nil && rt.body != nil && rt.body.exceeded.Load()):
		rpcserver.WriteError(w, r, p.tooLarge())
	case errors.Is(r.Context().Err(), context.DeadlineExceeded):
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeDeadlineExceeded, err))
	case r.Context().Err() != nil:
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeCanceled, errors.New("call canceled")))
	default:
		addr := ""
		if rt != nil {
			addr = rt.backend.addr
			var op *net.OpError
			if errors.As(err, &op) && op.Op == "dial" {
				// Stop sending calls there until a health check finds it SERVING again.
				rt.backend.setState(stateUnhealthy)
			}
		}
		p.logger.WarnContext(r.Context(), "backend call failed", "procedure", r.URL.Path, "backend", addr, "err", err)
		rpcserver.WriteError(w, r, connect.NewError(connect.CodeUnavailable, errors.New("backend unavailable")))
	}
}

func (p *Proxy) tooLarge() *connect.Error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("request larger than %d bytes", p.maxBytes))
}

// serviceOf returns "pkg.Service" from "/pkg.Service/Method".
func serviceOf(path string) (string, bool) {
	service, _, ok := procedure.Split(path)
	return service, ok
}

// limitedBody notes when the request body went over the limit, whatever error the transport turns that into.
type limitedBody struct {
	io.ReadCloser
	exceeded atomic.Bool
}

func (b *limitedBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	var mbe *http.MaxBytesError
	if err != nil && errors.As(err, &mbe) {
		b.exceeded.Store(true)
	}
	return n, err
}

// statusWriter records the status code for the log line. Unwrap lets http.ResponseController reach the
// underlying writer's Flush.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
