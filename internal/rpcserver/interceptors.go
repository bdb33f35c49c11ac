package rpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"connectrpc.com/validate"

	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/protolimit"
	"github.com/loom-dev/loom/internal/telemetry"
)

// Interceptors returns the server interceptor chain. The first listed is the outermost, and every one wraps
// unary and streaming RPCs alike (a connect.UnaryInterceptorFunc would silently skip streams):
//
//  0. tracing (when cfg.TracerProvider is set): connectrpc.com/otelconnect's server span, continuing the
//     caller's W3C trace context (traceparent). Outermost, so the span covers everything below and every log
//     line of the call, the recover's included, carries its trace and span ids; it sees the final code,
//     including the Internal that recover makes of a panic. Absent when tracing is off, so off costs nothing.
//  1. recover: so a panic anywhere below (including in another interceptor) becomes Internal plus a log line,
//     and the process lives on.
//  2. logging: one line per failed or slow call (successful ones at debug, or a sampled fraction at info) with
//     procedure, code, duration and principal; it sees the final code, including the one recover produced.
//  3. metrics: grpc_server_* and loom_rpc_* per procedure, counted like the log line.
//  4. audit (when configured): one append-only event per mutating RPC with its result; before authorization so
//     refused attempts are on the trail too.
//  5. authorization: the role the contract declares for the RPC ((loom.auth.v1.required_role)) against the
//     principal's roles; deny by default. After logging and metrics so refusals are seen, before any work.
//  6. fairness: per-tenant and per-principal bounds on unary calls in flight and open streams (see
//     [FairnessLimits]), apart from the global pool. It needs the principal, which authentication (HTTP
//     middleware, before this chain) put in the context; after authorization, so only authorized calls hold
//     slots, and after logging and metrics, so its refusals are seen; before any work.
//  7. deadlines: gives unary calls without a deadline the default (streams the maximum) and caps the rest at the
//     maximum, before any work starts.
//  8. nesting: refuses requests whose google.protobuf.Struct/Value data nests deeper than protolimit.MaxDepth
//     (64) JSON levels, naming the field, so nothing is stored that could not be read back; just before
//     validation, so protovalidate never walks a hostile structure.
//  9. validation: protovalidate rules from the contracts; innermost, so rejected requests are still logged and
//     counted, and handlers only ever see valid messages.
//
// cfg has had its defaults applied (see [New]).
func Interceptors(logger *slog.Logger, m *metrics, cfg Config) ([]connect.Interceptor, error) {
	var chain []connect.Interceptor
	if cfg.TracerProvider != nil {
		otel, err := otelconnect.NewInterceptor(
			otelconnect.WithTracerProvider(cfg.TracerProvider),
			otelconnect.WithPropagator(telemetry.Propagator()),
			otelconnect.WithTrustRemote(), // continue the gateway's (and any caller's) trace, as otelhttp does
			otelconnect.WithoutMetrics(),  // metrics come from the metrics interceptor, in Prometheus
		)
		if err != nil {
			return nil, fmt.Errorf("rpcserver: tracing interceptor: %w", err)
		}
		chain = append(chain, otel)
	}
	chain = append(chain,
		&recoverInterceptor{logger: logger},
		&logInterceptor{logger: logger, sample: cfg.LogSampleRate, slow: cfg.SlowCall},
		&metricsInterceptor{m: m},
	)
	if cfg.Audit != nil {
		chain = append(chain, audit.Interceptor(cfg.Audit, logger))
	}
	return append(chain,
		authzInterceptor{},
		fairnessInterceptor{newFairness(cfg.Fairness)},
		&deadlineInterceptor{def: cfg.DefaultTimeout, max: cfg.MaxTimeout},
		protolimit.NewInterceptor(protolimit.MaxDepth),
		validate.NewInterceptor(),
	), nil
}

// errInternal is what a client sees of a panic; the detail goes to the log.
var errInternal = errors.New("internal error")

type recoverInterceptor struct{ logger *slog.Logger }

func (i *recoverInterceptor) recovered(ctx context.Context, procedure string, r any, err *error) {
	i.logger.ErrorContext(ctx, "panic in handler", "procedure", procedure, "panic", r, "stack", string(debug.Stack()))
	*err = connect.NewError(connect.CodeInternal, errInternal)
}

func (i *recoverInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (res connect.AnyResponse, err error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		defer func() {
			if r := recover(); r != nil {
				res = nil
				i.recovered(ctx, req.Spec().Procedure, r, &err)
			}
		}()
		return next(ctx, req)
	}
}

func (i *recoverInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *recoverInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) (err error) {
		defer func() {
			if r := recover(); r != nil {
				i.recovered(ctx, conn.Spec().Procedure, r, &err)
			}
		}()
		return next(ctx, conn)
	}
}

// logInterceptor writes one line per RPC: failed calls always (error level for Internal, Unknown and DataLoss;
// warn for Unavailable, DeadlineExceeded and ResourceExhausted; info for the caller's mistakes), unary calls
// slower than slow always (warn), and successful ones at debug, except a fraction sample of them at info.
type logInterceptor struct {
	logger *slog.Logger
	sample float64       // fraction of successful calls logged at info; 0 logs none there
	slow   time.Duration // calls at least this long are logged at warn; <= 0 never
}

func (i *logInterceptor) log(ctx context.Context, procedure, protocol, peer string, unary bool, start time.Time, err error) {
	elapsed := time.Since(start)
	code := "ok"
	level := slog.LevelDebug
	slow := unary && i.slow > 0 && elapsed >= i.slow // streams are long-lived by design
	if err != nil {
		c := connect.CodeOf(err)
		code = c.String()
		level = slog.LevelInfo
		switch c {
		case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
			level = slog.LevelError
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeResourceExhausted:
			level = slog.LevelWarn
		}
	} else if i.sample > 0 && (i.sample >= 1 || rand.Float64() < i.sample) {
		level = slog.LevelInfo
	}
	if slow && level < slog.LevelWarn {
		level = slog.LevelWarn
	}
	if !i.logger.Enabled(ctx, level) {
		return // the common case for successful calls: no attributes built
	}
	attrs := []slog.Attr{
		slog.String("procedure", procedure),
		slog.String("code", code),
		slog.Duration("duration", elapsed),
		slog.String("protocol", protocol),
		slog.String("peer", peer),
	}
	if slow {
		attrs = append(attrs, slog.Bool("slow", true))
	}
	if p, ok := principal.FromContext(ctx); ok {
		attrs = append(attrs, slog.String("tenant", p.Tenant), slog.String("subject", p.Subject))
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	i.logger.LogAttrs(ctx, level, "rpc", attrs...)
}

func (i *logInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		res, err := next(ctx, req)
		i.log(ctx, req.Spec().Procedure, req.Peer().Protocol, req.Peer().Addr, true, start, err)
		return res, err
	}
}

func (i *logInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *logInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		i.log(ctx, conn.Spec().Procedure, conn.Peer().Protocol, conn.Peer().Addr, false, start, err)
		return err
	}
}

type metricsInterceptor struct{ m *metrics }

func (i *metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		c := i.m.start(req.Spec())
		c.recv.Inc()
		res, err := next(ctx, req)
		if err == nil {
			c.sent.Inc()
		}
		c.end(err)
		return res, err
	}
}

func (i *metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		c := i.m.start(conn.Spec())
		err := next(ctx, &countingConn{StreamingHandlerConn: conn, recv: c.recv, sent: c.sent})
		c.end(err)
		return err
	}
}

// deadlineInterceptor gives every call a deadline and caps it at max. A unary call without one gets def; a
// stream without one gets max, since streams such as WatchRun are long-lived by design.
type deadlineInterceptor struct{ def, max time.Duration }

func (i *deadlineInterceptor) bound(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	switch {
	case !ok:
		return context.WithTimeout(ctx, def)
	case time.Until(dl) > i.max:
		return context.WithTimeout(ctx, i.max)
	default:
		return ctx, func() {}
	}
}

func (i *deadlineInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, cancel := i.bound(ctx, i.def)
		defer cancel()
		return next(ctx, req)
	}
}

func (i *deadlineInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *deadlineInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, cancel := i.bound(ctx, i.max)
		defer cancel()
		return next(ctx, conn)
	}
}
