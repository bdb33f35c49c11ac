// Package rpcclient builds the grpc-go connections one Loom service uses to call another. It is the only way a
// service reaches another one, in split deployments and in all-in-one mode alike.
//
// Each connection: resolves a "dns:///host:port" target or a static address list; balances round-robin over
// every address whose grpc.health.v1 status is SERVING (client-side health checking); retries only UNAVAILABLE
// and only for RPCs the contract marks idempotent (idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT); gives
// every call a deadline (the caller's remaining budget travels to the server as grpc-timeout); and logs each
// call with go-grpc-middleware's logging interceptor. A circuit breaker per target (sony/gobreaker) counts only
// server-side failures and fails calls fast while the target is down; a retry budget keeps retries from
// multiplying load.
package rpcclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/timeout"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // enables client-side health checking
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/loom-dev/loom/internal/procedure"
	"github.com/loom-dev/loom/internal/telemetry"
)

// Config describes one target service.
type Config struct {
	// Target is "dns:///host:port" (every address the name resolves to), a comma-separated static list
	// "host1:port,host2:port", or a single "host:port" (resolved through DNS).
	Target string
	// Service is the fully-qualified service name whose health status decides whether an address gets calls,
	// for example memoryv1.MemoryService_ServiceDesc.ServiceName.
	Service string
	// Timeout is the deadline of a unary call whose context has none. Default 10 s. A context that already has
	// a deadline keeps the earlier of the two.
	Timeout time.Duration
	// MaxRetries bounds retries of idempotent calls that failed with UNAVAILABLE. Default 3.
	MaxRetries uint
	// TLS enables TLS with this configuration; nil means cleartext HTTP/2.
	TLS *tls.Config
	// Logger receives one line per call at debug level, and failures at warn.
	Logger *slog.Logger
	// Tokens, when set, mints a service token for every call, carrying the caller's principal to the target.
	Tokens TokenMinter
	// BreakerOpenFor is how long the circuit breaker stays open before a probe call. Default 5 s.
	BreakerOpenFor time.Duration
	// RetryRatio is the retry budget: retries may add at most this fraction of calls (plus a reserve of 10).
	// Default 0.1.
	RetryRatio float64
	// TracerProvider, when set, traces every call (otelgrpc's client stats handler: one client span per
	// attempt, the W3C trace context sent to the target); grpc.health.v1 checks are not traced. Nil means no
	// tracing, at no cost.
	TracerProvider trace.TracerProvider
	// Metrics, when set, exports the state of this target's circuit breaker (see [Metrics]).
	Metrics *Metrics
}

// Dial creates the connection for cfg. It does not block: addresses are connected lazily and re-resolved.
// Close the connection when done.
func Dial(cfg Config) (*grpc.ClientConn, error) {
	if cfg.Target == "" {
		return nil, errors.New("rpcclient: empty target")
	}
	if cfg.Service == "" {
		return nil, errors.New("rpcclient: empty service name")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BreakerOpenFor <= 0 {
		cfg.BreakerOpenFor = 5 * time.Second
	}
	if cfg.RetryRatio <= 0 {
		cfg.RetryRatio = 0.1
	}
	breaker := newBreaker(cfg.Target, cfg.BreakerOpenFor, cfg.Logger)
	cfg.Metrics.add(cfg.Target, breaker)
	budget := newRetryBudget(cfg.RetryRatio, 10)

	target, opts, err := resolve(cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("rpcclient: target: %w", err)
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	serviceConfig := fmt.Sprintf(`{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":%q}}`, cfg.Service)

	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		cfg.Logger.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(func(c codes.Code) logging.Level {
			if c == codes.OK {
				return logging.LevelDebug
			}
			return logging.LevelWarn
		}),
	}
	retryOpts := []retry.CallOption{
		retry.WithRetriable(func(err error) bool {
			return status.Code(err) == codes.Unavailable && budget.withdraw()
		}),
		retry.WithMax(cfg.MaxRetries + 1), // attempts in all
		retry.WithBackoff(retry.BackoffExponentialWithJitter(50*time.Millisecond, 0.2)),
	}
	idempotent := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return Idempotent(c.FullMethod())
	})

	if cfg.TracerProvider != nil {
		opts = append(opts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(cfg.TracerProvider),
			otelgrpc.WithPropagators(telemetry.Propagator()),
			otelgrpc.WithMeterProvider(noopmetric.NewMeterProvider()), // metrics are Prometheus, server side
			otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool {
				return !strings.HasPrefix(info.FullMethodName, "/grpc.health.v1.Health/")
			}),
		)))
	}
	if cfg.Tokens != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(serviceTokens{minter: cfg.Tokens, audience: cfg.Service, secure: cfg.TLS != nil}))
	}
	opts = append(opts,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(serviceConfig),
		// Outermost first: log the whole call (retries included); bound it with a deadline; fail fast while the
		// breaker is open (one breaker outcome per call, after its retries); count the call for the retry
		// budget; retry idempotent calls inside the deadline while the budget allows.
		grpc.WithChainUnaryInterceptor(
			logging.UnaryClientInterceptor(logger, logOpts...),
			timeout.UnaryClientInterceptor(cfg.Timeout),
			breakerInterceptor(breaker),
			budgetInterceptor(budget),
			selector.UnaryClientInterceptor(retry.UnaryClientInterceptor(retryOpts...), idempotent),
		),
		grpc.WithChainStreamInterceptor(
			logging.StreamClientInterceptor(logger, logOpts...),
		),
	)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("rpcclient: dial %s: %w", cfg.Target, err)
	}
	return conn, nil
}

// resolve turns a target into a grpc-go target and the dial options it needs: a DNS name or a single address
// is resolved (and re-resolved) through DNS, a list gets a static resolver of its own.
func resolve(target string) (string, []grpc.DialOption, error) {
	t, err := ParseTarget(target)
	if err != nil {
		return "", nil, err
	}
	switch {
	case t.DNSHost != "":
		return "dns:///" + net.JoinHostPort(t.DNSHost, t.DNSPort), nil, nil
	case len(t.Addrs) == 1:
		return "dns:///" + t.Addrs[0], nil, nil
	}
	r := manual.NewBuilderWithScheme("loom-static")
	state := resolver.State{}
	for _, a := range t.Addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	return "loom-static:///" + strings.Join(t.Addrs, ","), []grpc.DialOption{grpc.WithResolvers(r)}, nil
}

// Idempotent reports whether the contract marks fullMethod ("/pkg.Service/Method") NO_SIDE_EFFECTS or
// IDEMPOTENT: only those calls are retried, since a retried call may have reached the server already.
func Idempotent(fullMethod string) bool {
	switch procedure.Idempotency(fullMethod) {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS, descriptorpb.MethodOptions_IDEMPOTENT:
		return true
	}
	return false
}
