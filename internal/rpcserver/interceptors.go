package rpcserver

import (
	"context"
	"errors"
	"log/slog"
	"runtime/debug"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/validate"

	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/protolimit"
)

// Interceptors returns the server interceptor chain. The first listed is the outermost, and every one wraps
// unary and streaming RPCs alike (a connect.UnaryInterceptorFunc would silently skip streams):
//
//  1. recover: outermost, so a panic anywhere below (including in another interceptor) becomes Internal plus a
//     log line, and the process lives on.
//  2. logging: one line per RPC with procedure, code, duration and principal; it sees the final code, including
//     the one recover produced.
//  3. metrics: requests, errors and latency per procedure, counted like the log line.
//  4. audit (when configured): one append-only event per mutating RPC with its result; before authorization so
//     refused attempts are on the trail too.
//  5. authorization: the role the contract declares for the RPC ((loom.auth.v1.required_role)) against the
//     principal's roles; deny by default. After logging and metrics so refusals are seen, before any work.
//  6. deadlines: gives unary calls without a deadline the default (streams the maximum) and caps the rest at the
//     maximum, before any work starts.
//  7. nesting: refuses requests whose google.protobuf.Struct/Value data nests deeper than protolimit.MaxDepth
//     (64) JSON levels, naming the field, so nothing is stored that could not be read back; just before
//     validation, so protovalidate never walks a hostile structure.
//  8. validation: protovalidate rules from the contracts; innermost, so rejected requests are still logged and
//     counted, and handlers only ever see valid messages.
func Interceptors(logger *slog.Logger, m *metrics, trail audit.Appender, defaultTimeout, maxTimeout time.Duration) []connect.Interceptor {
	chain := []connect.Interceptor{
		&recoverInterceptor{logger: logger},
		&logInterceptor{logger: logger},
		&metricsInterceptor{m: m},
	}
	if trail != nil {
		chain = append(chain, audit.Interceptor(trail, logger))
	}
	return append(chain,
		authzInterceptor{},
		&deadlineInterceptor{def: defaultTimeout, max: maxTimeout},
		protolimit.NewInterceptor(protolimit.MaxDepth),
		validate.NewInterceptor(),
	)
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

type logInterceptor struct{ logger *slog.Logger }

func (i *logInterceptor) log(ctx context.Context, procedure, protocol, peer string, start time.Time, err error) {
	code := "ok"
	level := slog.LevelInfo
	if err != nil {
		c := connect.CodeOf(err)
		code = c.String()
		switch c {
		case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
			level = slog.LevelError
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeResourceExhausted:
			level = slog.LevelWarn
		}
	}
	attrs := []slog.Attr{
		slog.String("procedure", procedure),
		slog.String("code", code),
		slog.Duration("duration", time.Since(start)),
		slog.String("protocol", protocol),
		slog.String("peer", peer),
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
		i.log(ctx, req.Spec().Procedure, req.Peer().Protocol, req.Peer().Addr, start, err)
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
		i.log(ctx, conn.Spec().Procedure, conn.Peer().Protocol, conn.Peer().Addr, start, err)
		return err
	}
}

type metricsInterceptor struct{ m *metrics }

func (i *metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		done := i.m.start(req.Spec().Procedure)
		res, err := next(ctx, req)
		done(err)
		return res, err
	}
}

func (i *metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		done := i.m.start(conn.Spec().Procedure)
		err := next(ctx, conn)
		done(err)
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
