package rpcserver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/internal/principal"
)

// Default fairness limits (see [Config]). They sit well under the default global pool (MaxInFlight 1024), so
// no one tenant, and no one principal within it, can hold more than a quarter of the pool.
const (
	DefaultTenantMaxInFlight    = 256
	DefaultTenantMaxStreams     = 256
	DefaultPrincipalMaxInFlight = 128
	DefaultPrincipalMaxStreams  = 128
)

// FairnessLimits bounds what one caller may hold at once, separately from the global pool of calls in flight.
// Unary calls and streams are counted apart, so long-lived streams (WatchRun, SynthesizeSpeech) cannot use up a
// tenant's allowance for unary calls, nor the reverse. A value <= 0 disables that limit.
type FairnessLimits struct {
	// TenantMaxInFlight bounds one tenant's unary calls in progress, all its principals together.
	TenantMaxInFlight int
	// TenantMaxStreams bounds one tenant's open streams.
	TenantMaxStreams int
	// PrincipalMaxInFlight bounds one principal's (tenant and subject: a user, an API key) unary calls.
	PrincipalMaxInFlight int
	// PrincipalMaxStreams bounds one principal's open streams.
	PrincipalMaxStreams int
}

// fairness counts each tenant's and each principal's unary calls and streams in progress and refuses a call
// that would take a count over its limit, at once, with ResourceExhausted naming the limit and a RetryInfo
// detail. It never queues. Counters are kept only while a caller has something in progress: the entry is
// deleted when its last call ends, so memory is bounded by the calls in flight (themselves bounded by the
// global pool), not by how many callers were ever seen. It is safe for concurrent use.
type fairness struct {
	lim FairnessLimits

	mu         sync.Mutex
	tenants    map[string]*held
	principals map[string]*held
}

// held is what one caller has in progress.
type held struct{ unary, streams int }

func newFairness(lim FairnessLimits) *fairness {
	return &fairness{lim: lim, tenants: map[string]*held{}, principals: map[string]*held{}}
}

// fairnessRetry is the retry delay a refused call is told to wait: slots free as calls end, so soon.
const fairnessRetry = 100 * time.Millisecond

// acquire takes a slot for a call of p (a stream when stream is true) and returns the function that gives it
// back. A call without a principal is not counted (authorization, outside this interceptor, refuses it).
func (f *fairness) acquire(p principal.Principal, stream bool) (release func(), err error) {
	if f == nil || p.Tenant == "" {
		return func() {}, nil
	}
	tlim, plim, kind := f.lim.TenantMaxInFlight, f.lim.PrincipalMaxInFlight, "unary calls in flight"
	if stream {
		tlim, plim, kind = f.lim.TenantMaxStreams, f.lim.PrincipalMaxStreams, "open streams"
	}
	pkey := p.Tenant + "\x00" + p.Subject
	f.mu.Lock()
	defer f.mu.Unlock()
	t, pr := f.tenants[p.Tenant], f.principals[pkey]
	if t == nil {
		t = &held{}
	}
	if pr == nil {
		pr = &held{}
	}
	ct, cp := &t.unary, &pr.unary
	if stream {
		ct, cp = &t.streams, &pr.streams
	}
	switch {
	case plim > 0 && *cp >= plim:
		return nil, retryLater(fmt.Errorf("per-principal limit of %d %s reached (principal-max-%s)", plim, kind, flagSuffix(stream)), fairnessRetry)
	case tlim > 0 && *ct >= tlim:
		return nil, retryLater(fmt.Errorf("per-tenant limit of %d %s reached (tenant-max-%s)", tlim, kind, flagSuffix(stream)), fairnessRetry)
	}
	*ct, *cp = *ct+1, *cp+1
	f.tenants[p.Tenant], f.principals[pkey] = t, pr
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			*ct, *cp = *ct-1, *cp-1
			if t.unary == 0 && t.streams == 0 {
				delete(f.tenants, p.Tenant)
			}
			if pr.unary == 0 && pr.streams == 0 {
				delete(f.principals, pkey)
			}
		})
	}, nil
}

// flagSuffix names the limit as its `loom serve` flag does.
func flagSuffix(stream bool) string {
	if stream {
		return "streams"
	}
	return "in-flight"
}

// entries returns how many tenants and principals have something in progress (tests).
func (f *fairness) entries() (tenants, principals int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tenants), len(f.principals)
}

// fairnessInterceptor applies fairness to unary calls and to streams (a connect.UnaryInterceptorFunc would
// leave streams uncounted, and streams are what hold slots longest).
type fairnessInterceptor struct{ f *fairness }

func (i fairnessInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		p, _ := principal.FromContext(ctx)
		release, err := i.f.acquire(p, false)
		if err != nil {
			return nil, err
		}
		defer release()
		return next(ctx, req)
	}
}

func (i fairnessInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i fairnessInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		p, _ := principal.FromContext(ctx)
		release, err := i.f.acquire(p, true)
		if err != nil {
			return err
		}
		defer release()
		return next(ctx, conn)
	}
}
