// Package rpcserver builds Loom's one server: a single port that serves Connect (HTTP/1.1 and HTTP/2), gRPC and
// gRPC-Web for every mounted service, plus grpc.health.v1, gRPC reflection (v1 and v1alpha), CORS for
// Connect-Web, /healthz, /readyz and /metrics.
//
// The request path is: net/http (limits, h2c or TLS) -> CORS -> load shedding (a bound on calls in flight) ->
// authentication middleware (fills the principal before the body is decoded) -> per-principal rate limit ->
// the Connect handler -> the interceptor chain (see [Interceptors]) -> the service implementation.
package rpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/cors"
	"go.opentelemetry.io/otel/trace"

	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/tlsfiles"
)

// Config holds the server's limits and transport settings. Zero values take the defaults documented per field.
type Config struct {
	// Addr to listen on, for example ":8080".
	Addr string
	// TLSCertFile and TLSKeyFile enable TLS when both are set; otherwise the server speaks h2c (cleartext HTTP/2
	// and HTTP/1.1).
	TLSCertFile, TLSKeyFile string
	// TLSClientCAFile, with TLS on, lets clients present certificates signed by this CA (PEM); a certificate that
	// does not verify fails the handshake. Whether a call needs one is the authenticator's decision (service
	// tokens do when authn.Config.ServiceClientCert is set; see tlsfiles.Verified). Every TLS file is read again
	// when it changes on disk, so renewed certificates apply without a restart.
	TLSClientCAFile string
	// MaxMessageBytes bounds one request or response message after decompression. Default 4 MiB.
	MaxMessageBytes int
	// MaxHeaderBytes bounds request headers. Default 64 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds reading request headers. Default 10 s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a request body. Default 60 s.
	ReadTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections. Default 120 s.
	IdleTimeout time.Duration
	// DefaultTimeout is the deadline given to calls that carry none. Default 30 s.
	DefaultTimeout time.Duration
	// MaxTimeout caps every call's deadline, streams included. Default 1 h. The write timeout is MaxTimeout plus
	// a margin, so a stream is never cut by the transport before its own deadline.
	MaxTimeout time.Duration
	// MaxConcurrentStreams bounds HTTP/2 streams per connection. Default 250.
	MaxConcurrentStreams int
	// ShutdownGrace is how long in-flight calls may run after shutdown begins. Default 20 s.
	ShutdownGrace time.Duration
	// CORSOrigins lists origins allowed to call from a browser; "*" allows any. Empty disables CORS.
	CORSOrigins []string
	// Reflection enables gRPC server reflection (v1 and v1alpha).
	Reflection bool
	// Reflect names further services that reflection describes although this server does not mount them: the
	// gateway's, which it forwards to backends (their descriptors must be linked into the binary).
	Reflect []string
	// AuthMode ("local" or "required") is sent in the AuthModeHeader of /healthz responses, so that a gateway can
	// refuse to run in local mode in front of a backend that requires credentials. Empty sends nothing.
	AuthMode string
	// MaxInFlight bounds calls in progress at once (streams included); calls beyond it are refused at once with
	// ResourceExhausted instead of queueing. Default 1024.
	MaxInFlight int
	// RateLimit is the calls per second each principal may make (a token bucket of RateBurst); 0 means no limit.
	// Refused calls get ResourceExhausted with a RetryInfo detail.
	RateLimit float64
	// RateBurst is the bucket size; 0 means max(1, RateLimit).
	RateBurst int
	// Fairness bounds one tenant's and one principal's unary calls in progress and open streams, apart from
	// MaxInFlight, so that no caller can take the whole pool (see [FairnessLimits]). A zero field takes its
	// default (DefaultTenantMaxInFlight and so on); a negative one disables that limit.
	Fairness FairnessLimits
	// Audit, when set, receives an event for every mutating RPC (see package audit).
	Audit audit.Appender
	// Fallback, when set, receives authenticated, rate-limited calls to procedures no mounted service serves:
	// the gateway's proxy to the backends.
	Fallback http.Handler
	// Console, when set, serves the browser console under /console/ (and / redirects there).
	Console http.Handler
	// MCP, when set, serves the Model Context Protocol endpoint at /mcp, behind the same load shedding,
	// authentication and rate limit as the RPCs (see package mcpserver); it makes its RPCs through
	// [Server.Dispatcher], so each is counted once.
	MCP http.Handler
	// TracerProvider, when set, traces every RPC (see [Interceptors]); nil means tracing off, with no tracing
	// interceptor at all.
	TracerProvider trace.TracerProvider
	// LogSampleRate is the fraction of successful calls logged at info, in [0, 1]; the others are logged at
	// debug. 0 (the default) logs none at info. Failed and slow calls are always logged.
	LogSampleRate float64
	// SlowCall is the duration from which a unary call is logged at warn whatever its outcome. Default 1 s;
	// negative turns it off.
	SlowCall time.Duration
}

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 4 << 20
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	def(&c.ReadHeaderTimeout, 10*time.Second)
	def(&c.ReadTimeout, 60*time.Second)
	def(&c.IdleTimeout, 120*time.Second)
	def(&c.DefaultTimeout, 30*time.Second)
	def(&c.MaxTimeout, time.Hour)
	def(&c.ShutdownGrace, 20*time.Second)
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.MaxConcurrentStreams <= 0 {
		c.MaxConcurrentStreams = 250
	}
	fair := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	fair(&c.Fairness.TenantMaxInFlight, DefaultTenantMaxInFlight)
	fair(&c.Fairness.TenantMaxStreams, DefaultTenantMaxStreams)
	fair(&c.Fairness.PrincipalMaxInFlight, DefaultPrincipalMaxInFlight)
	fair(&c.Fairness.PrincipalMaxStreams, DefaultPrincipalMaxStreams)
	return c
}

// Authenticator turns a request into a principal before its body is read. An error refuses the call with
// Unauthenticated, or with ResourceExhausted and a RetryInfo detail if it has a RetryAfter() time.Duration
// method (a caller slowed for guessing credentials).
type Authenticator func(r *http.Request) (principal.Principal, error)

// LocalAuthenticator gives every call [principal.Local]: the embedded development mode.
func LocalAuthenticator(*http.Request) (principal.Principal, error) { return principal.Local, nil }

// Server serves a set of services on one port. Create it with [New].
type Server struct {
	cfg      Config
	logger   *slog.Logger
	services []Service
	health   *grpchealth.StaticChecker
	registry *prometheus.Registry
	handler  http.Handler
	dispatch http.Handler

	mu      sync.Mutex
	serving bool
}

// compressMinBytes is the smallest response the server compresses.
const compressMinBytes = 1024

// AuthModeHeader is the /healthz response header naming the server's authentication mode.
const AuthModeHeader = "Loom-Auth-Mode"

// New builds a server for services. auth runs before every RPC; nil means [LocalAuthenticator].
func New(logger *slog.Logger, cfg Config, auth Authenticator, services ...Service) (*Server, error) {
	cfg = cfg.withDefaults()
	if auth == nil {
		auth = LocalAuthenticator
	}
	names := make([]string, 0, len(services))
	for _, svc := range services {
		if svc.Name == "" || svc.Handler == nil {
			return nil, errors.New("rpcserver: service needs a name and a handler")
		}
		names = append(names, svc.Name)
	}
	s := &Server{
		cfg:      cfg,
		logger:   logger,
		services: services,
		health:   grpchealth.NewStaticChecker(names...),
		registry: prometheus.NewRegistry(),
		serving:  true,
	}
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := newMetrics(s.registry)
	chain, err := Interceptors(logger, metrics, cfg)
	if err != nil {
		return nil, err
	}
	ref := &refusals{m: metrics, logger: logger}

	opts := []connect.HandlerOption{
		connect.WithInterceptors(chain...),
		connect.WithReadMaxBytes(cfg.MaxMessageBytes),
		connect.WithSendMaxBytes(cfg.MaxMessageBytes),
		// A client that accepts gzip gets it only for responses worth it: compressing the many small answers
		// was about 10% of the server's CPU under load, for bytes a loopback or LAN does not miss.
		connect.WithCompressMinBytes(compressMinBytes),
	}
	rpc := http.NewServeMux()
	for _, svc := range services {
		path, h := svc.Handler(opts...)
		rpc.Handle(path, h)
	}
	if cfg.Fallback != nil {
		rpc.Handle("/", cfg.Fallback)
	}
	if cfg.Reflection {
		reflector := grpcreflect.NewStaticReflector(append(slices.Clone(names), cfg.Reflect...)...)
		rpc.Handle(grpcreflect.NewHandlerV1(reflector, connect.WithReadMaxBytes(cfg.MaxMessageBytes)))
		rpc.Handle(grpcreflect.NewHandlerV1Alpha(reflector, connect.WithReadMaxBytes(cfg.MaxMessageBytes)))
	}

	mux := http.NewServeMux()
	// Health is public: load balancers and probes call it without credentials.
	mux.Handle(grpchealth.NewHandler(s.health, connect.WithReadMaxBytes(cfg.MaxMessageBytes)))
	var limiter *rateLimiter
	if cfg.RateLimit > 0 {
		limiter = newRateLimiter(cfg.RateLimit, cfg.RateBurst)
	}
	mux.Handle("/", shedLoad(cfg.MaxInFlight, ref, authenticate(auth, ref, rateLimit(limiter, ref, rpc))))
	s.dispatch = authenticate(auth, ref, rpc)
	if cfg.MCP != nil {
		mux.Handle("/mcp", shedLoad(cfg.MaxInFlight, ref, authenticate(auth, ref, rateLimit(limiter, ref, cfg.MCP))))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if cfg.AuthMode != "" {
			w.Header().Set(AuthModeHeader, cfg.AuthMode)
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{Registry: s.registry}))
	if cfg.Console != nil {
		mux.Handle("GET /console/", http.StripPrefix("/console", cfg.Console))
		mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusFound))
	}

	s.handler = withCORS(cfg.CORSOrigins, mux)
	return s, nil
}

// Handler returns the server's root handler, for tests that serve it themselves.
func (s *Server) Handler() http.Handler { return s.handler }

// Dispatcher returns the RPCs behind authentication and the interceptor chain but not behind load shedding or
// rate limiting, for a handler of this server that turns its own request into RPCs in process (the MCP
// endpoint): that request already holds an in-flight slot and paid its rate token, so a tool call counts once.
func (s *Server) Dispatcher() http.Handler { return s.dispatch }

// Registry returns the Prometheus registry behind /metrics, so callers can add their own collectors.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// SetServing sets every service's grpc.health.v1 status: SERVING or NOT_SERVING. Clients that check health
// (see package rpcclient) stop sending calls to a NOT_SERVING server.
func (s *Server) SetServing(serving bool) {
	s.mu.Lock()
	s.serving = serving
	s.mu.Unlock()
	status := grpchealth.StatusServing
	if !serving {
		status = grpchealth.StatusNotServing
	}
	s.health.SetStatus("", status)
	for _, svc := range s.services {
		s.health.SetStatus(svc.Name, status)
	}
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	s.mu.Lock()
	serving := s.serving
	s.mu.Unlock()
	if !serving {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	for _, svc := range s.services {
		if svc.Ready == nil {
			continue
		}
		if err := svc.Ready(ctx); err != nil {
			s.logger.WarnContext(ctx, "not ready", "service", svc.Name, "err", err)
			http.Error(w, svc.Name+": not ready", http.StatusServiceUnavailable)
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Serve accepts connections on ln until ctx is done, then shuts down gracefully: health turns NOT_SERVING, the
// listener closes, in-flight calls (streams too) get ShutdownGrace to finish, and remaining connections are
// closed. It returns nil after a graceful shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	cfg := s.cfg
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.MaxTimeout + 30*time.Second,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: cfg.MaxConcurrentStreams},
		Protocols:         new(http.Protocols),
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	srv.Protocols.SetHTTP1(true)
	tlsOn := cfg.TLSCertFile != "" && cfg.TLSKeyFile != ""
	if tlsOn {
		conf, err := tlsfiles.Server(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile)
		if err != nil {
			return err
		}
		srv.TLSConfig = conf
		srv.Protocols.SetHTTP2(true)
	} else {
		srv.Protocols.SetUnencryptedHTTP2(true)
	}

	errc := make(chan error, 1)
	go func() {
		if tlsOn {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	s.logger.InfoContext(ctx, "serving", "addr", ln.Addr().String(), "tls", tlsOn, "services", len(s.services))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.SetServing(false)
	s.logger.Info("shutting down", "grace", cfg.ShutdownGrace)
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		s.logger.Warn("grace period over; closing remaining connections", "err", err)
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	s.logger.Info("stopped")
	return nil
}

// authenticate resolves the principal before the request body is read and refuses the call if it cannot.
func authenticate(auth Authenticator, ref *refusals, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := auth(r)
		var later interface{ RetryAfter() time.Duration }
		if errors.As(err, &later) {
			ref.refuse(w, r, reasonThrottled, retryLater(err, later.RetryAfter()))
			return
		}
		var ce *connect.Error
		if errors.As(err, &ce) {
			reason := reasonUnauthenticated
			if ce.Code() == connect.CodeUnavailable {
				reason = reasonAuthUnavailable
			}
			ref.refuse(w, r, reason, ce) // the authenticator chose the code (Unavailable when its store is down)
			return
		}
		if err != nil {
			ref.refuse(w, r, reasonUnauthenticated, connect.NewError(connect.CodeUnauthenticated, err))
			return
		}
		next.ServeHTTP(w, r.WithContext(principal.NewContext(r.Context(), p)))
	})
}

// WriteError answers a refused call in the caller's protocol (Connect, gRPC or gRPC-Web), or as plain HTTP
// with the status the Connect protocol gives the code when the request speaks none of them.
func WriteError(w http.ResponseWriter, r *http.Request, err *connect.Error) {
	ew := connect.NewErrorWriter()
	if ew.IsSupported(r) {
		_ = ew.Write(w, r, err)
		return
	}
	http.Error(w, err.Message(), httpStatus(err.Code()))
}

// httpStatus is the HTTP status the Connect protocol uses for a code.
func httpStatus(c connect.Code) int {
	switch c {
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeUnimplemented, connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	case connect.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case connect.CodeCanceled:
		return 499 // client closed request
	case connect.CodeInvalidArgument:
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

func withCORS(origins []string, h http.Handler) http.Handler {
	if len(origins) == 0 {
		return h
	}
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: connectcors.AllowedMethods(),
		// The cors package's defaults do not include Authorization; browsers need it for bearer tokens.
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization"),
		ExposedHeaders: connectcors.ExposedHeaders(),
		MaxAge:         7200,
	}).Handler(h)
}
