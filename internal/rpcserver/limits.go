package rpcserver

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/loom-dev/loom/internal/principal"
)

// shedLoad refuses calls beyond max in flight at once with ResourceExhausted, immediately, instead of queueing
// them without bound. Health, metrics and readiness are not counted (they are not routed through it).
func shedLoad(max int, ref *refusals, next http.Handler) http.Handler {
	if max <= 0 {
		return next
	}
	slots := make(chan struct{}, max)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
			next.ServeHTTP(w, r)
		default:
			ref.refuse(w, r, reasonLoadShed, retryLater(errors.New("server overloaded: too many calls in flight"), 100*time.Millisecond))
		}
	})
}

// retryLater is a ResourceExhausted error with a google.rpc.RetryInfo detail.
func retryLater(err error, after time.Duration) *connect.Error {
	cerr := connect.NewError(connect.CodeResourceExhausted, err)
	if d, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); derr == nil {
		cerr.AddDetail(d)
	}
	return cerr
}

// rateLimiter holds one token bucket per principal (tenant and subject), so one caller's burst cannot starve
// another's. Buckets unused for 10 minutes are dropped.
type rateLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	if burst <= 0 {
		burst = max(1, int(perSecond))
	}
	return &rateLimiter{limit: rate.Limit(perSecond), burst: burst, buckets: map[string]*bucket{}, swept: time.Now()}
}

// reserve reports whether key may make a call now, and if not how long until it may.
func (l *rateLimiter) reserve(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.seen) > 10*time.Minute {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[key] = b
	}
	b.seen = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// rateLimit applies per-principal limits; it runs after authentication, which put the principal in the context.
func rateLimit(l *rateLimiter, ref *refusals, next http.Handler) http.Handler {
	if l == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := principal.FromContext(r.Context())
		if ok, wait := l.reserve(p.Tenant+"\x00"+p.Subject, time.Now()); !ok {
			ref.refuse(w, r, reasonRateLimit, retryLater(errors.New("rate limit exceeded for this caller"), wait))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Reasons a call is refused before the interceptors, the reason label of loom_rpc_refused_total.
const (
	reasonLoadShed        = "load_shed"
	reasonRateLimit       = "rate_limit"
	reasonUnauthenticated = "unauthenticated"
	reasonThrottled       = "throttled"        // credential guessing slowed down (see package authn)
	reasonAuthUnavailable = "auth_unavailable" // the credential store did not answer
)

// refusals answers, counts and logs calls refused before the interceptors. Its log lines are sampled (the
// first few, then one a second per reason), since refusals come in floods; the counter counts every one.
type refusals struct {
	m      *metrics
	logger *slog.Logger
	mu     sync.Mutex
	every  map[string]*rate.Sometimes
}

func (f *refusals) refuse(w http.ResponseWriter, r *http.Request, reason string, err *connect.Error) {
	f.m.refusal(r, reason, err)
	f.mu.Lock()
	if f.every == nil {
		f.every = map[string]*rate.Sometimes{}
	}
	s := f.every[reason] // reasons are the constants above: the map stays small
	if s == nil {
		s = &rate.Sometimes{First: 3, Interval: time.Second}
		f.every[reason] = s
	}
	f.mu.Unlock()
	s.Do(func() {
		f.logger.LogAttrs(r.Context(), slog.LevelWarn, "rpc refused",
			slog.String("procedure", r.URL.Path), slog.String("reason", reason),
			slog.String("code", err.Code().String()), slog.String("peer", r.RemoteAddr),
			slog.String("err", err.Message()))
	})
	WriteError(w, r, err)
}
