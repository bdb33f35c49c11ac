package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Health states of a backend.
const (
	stateUnknown   int32 = iota // not checked yet
	stateHealthy                // last check: SERVING
	stateUnhealthy              // last check failed or said anything but SERVING
)

// backend is one address serving a service.
type backend struct {
	addr  string
	url   *url.URL
	state atomic.Int32
	stop  context.CancelFunc
}

func (b *backend) setState(s int32) int32 { return b.state.Swap(s) }

// pool is the set of backends of one service and the round-robin cursor over them.
type pool struct {
	logger  *slog.Logger
	service string
	scheme  string // of backend URLs: "http" (h2c) or "https"
	checker *healthChecker
	next    atomic.Uint64

	mu       sync.Mutex // guards changes to backends
	backends atomic.Pointer[[]*backend]
}

func newPool(logger *slog.Logger, service string, checker *healthChecker) *pool {
	p := &pool{logger: logger, service: service, scheme: "http", checker: checker}
	p.backends.Store(&[]*backend{})
	return p
}

func (p *pool) snapshot() []*backend { return *p.backends.Load() }

// pick returns the next healthy backend round-robin; if none is healthy, the next not yet checked one; else nil.
func (p *pool) pick() *backend {
	bs := p.snapshot()
	for _, want := range []int32{stateHealthy, stateUnknown} {
		n := 0
		for _, b := range bs {
			if b.state.Load() == want {
				n++
			}
		}
		if n == 0 {
			continue
		}
		k := int(p.next.Add(1) % uint64(n))
		for _, b := range bs {
			if b.state.Load() == want {
				if k == 0 {
					return b
				}
				k--
			}
		}
	}
	return nil
}

// setAddrs makes addrs the pool's backends: new addresses start being health-checked, vanished ones stop.
func (p *pool) setAddrs(ctx context.Context, addrs []string, wg *sync.WaitGroup) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.snapshot()
	next := make([]*backend, 0, len(addrs))
	for _, a := range addrs {
		if i := slices.IndexFunc(old, func(b *backend) bool { return b.addr == a }); i >= 0 {
			next = append(next, old[i])
			continue
		}
		bctx, cancel := context.WithCancel(ctx)
		b := &backend{addr: a, url: &url.URL{Scheme: p.scheme, Host: a}, stop: cancel}
		next = append(next, b)
		wg.Go(func() { p.checker.watch(bctx, p.logger, p.service, b) })
	}
	for _, b := range old {
		if !slices.Contains(addrs, b.addr) {
			b.stop()
		}
	}
	p.backends.Store(&next)
}

// resolveLoop resolves host every interval and updates the backends. A failed resolution keeps the last ones.
func (p *pool) resolveLoop(ctx context.Context, host, port string, interval time.Duration, wg *sync.WaitGroup) {
	for {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ips, err := net.DefaultResolver.LookupHost(lctx, host)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil || len(ips) == 0:
			p.logger.WarnContext(ctx, "resolve backends", "service", p.service, "host", host, "err", err)
		default:
			addrs := make([]string, 0, len(ips))
			for _, ip := range ips {
				addrs = append(addrs, net.JoinHostPort(ip, port))
			}
			slices.Sort(addrs)
			p.setAddrs(ctx, slices.Compact(addrs), wg)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// healthChecker polls grpc.health.v1.Health/Check over the same HTTP/2 transport the proxied calls use, so a
// check exercises the very connection calls will take.
type healthChecker struct {
	client   *http.Client
	interval time.Duration
	timeout  time.Duration
}

// watch checks b until ctx is done, updating its state and logging transitions.
func (h *healthChecker) watch(ctx context.Context, logger *slog.Logger, service string, b *backend) {
	check := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](
		h.client, b.url.String()+healthpb.Health_Check_FullMethodName, connect.WithGRPC())
	for {
		cctx, cancel := context.WithTimeout(ctx, h.timeout)
		res, err := check.CallUnary(cctx, connect.NewRequest(&healthpb.HealthCheckRequest{Service: service}))
		cancel()
		if ctx.Err() != nil {
			return
		}
		state, why := stateHealthy, ""
		switch {
		case err != nil:
			state, why = stateUnhealthy, err.Error()
		case res.Msg.GetStatus() != healthpb.HealthCheckResponse_SERVING:
			state, why = stateUnhealthy, res.Msg.GetStatus().String()
		}
		if prev := b.setState(state); prev != state {
			if state == stateHealthy {
				logger.InfoContext(ctx, "backend healthy", "service", service, "backend", b.addr)
			} else {
				logger.WarnContext(ctx, "backend unhealthy", "service", service, "backend", b.addr, "reason", why)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.interval):
		}
	}
}
