package rpcclient

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/loom-dev/loom/internal/upstream"
)

// serverFault reports whether err is the target's fault (it is down, overloaded or broken) rather than the
// caller's (a bad request, a missing resource, a cancelled context) or an upstream provider's that the target
// reports (an error carrying the upstream.Reason detail: a tenant's model API failing says nothing about the
// agent service, which every tenant shares). Only server faults trip the breaker.
func serverFault(err error) bool {
	if upstream.Is(err) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss, codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	}
	return false
}

// newBreaker returns a circuit breaker for one target: it opens after 5 consecutive server faults, or when at
// least half of 20 or more calls in a 10 s window failed that way; it stays open for openFor, then lets one
// probe call through and closes again if that succeeds.
func newBreaker(name string, openFor time.Duration, logger *slog.Logger) *gobreaker.CircuitBreaker[any] {
	return gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Interval:    10 * time.Second,
		Timeout:     openFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= 5 || (c.Requests >= 20 && c.TotalFailures*2 >= c.Requests)
		},
		IsSuccessful: func(err error) bool { return err == nil || !serverFault(err) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			logger.Warn("circuit breaker", "target", name, "from", from.String(), "to", to.String())
		},
	})
}

// breakerInterceptor fails calls fast with Unavailable while the target's breaker is open.
func breakerInterceptor(cb *gobreaker.CircuitBreaker[any]) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		_, err := cb.Execute(func() (any, error) {
			return nil, invoker(ctx, method, req, reply, cc, opts...)
		})
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			return status.Errorf(codes.Unavailable, "circuit breaker open for %s", cb.Name())
		}
		return err
	}
}

// retryBudget caps retries at a fraction of recent calls, so that when a target struggles, retries cannot
// multiply the load on it: each call earns ratio tokens (up to max), each retry spends one.
//
// It is the token bucket of grpc-go's retryThrottling (gRFC A6), which cannot be used here: grpc-go applies
// retryThrottling only to its own service-config retryPolicy, and the retries are go-grpc-middleware's
// (retry.UnaryClientInterceptor), which decides per call from the contract's idempotency level, so the budget
// is checked in its retry predicate instead.
type retryBudget struct {
	mu     sync.Mutex
	tokens float64
	ratio  float64
	max    float64
}

func newRetryBudget(ratio, max float64) *retryBudget {
	return &retryBudget{tokens: max, ratio: ratio, max: max}
}

// deposit records a call.
func (b *retryBudget) deposit() {
	b.mu.Lock()
	b.tokens = min(b.max, b.tokens+b.ratio)
	b.mu.Unlock()
}

// withdraw takes a token for a retry and reports whether there was one.
func (b *retryBudget) withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// budgetInterceptor deposits into the budget once per call (not per attempt).
func budgetInterceptor(b *retryBudget) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		b.deposit()
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
