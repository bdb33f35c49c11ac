package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/sony/gobreaker/v2"

	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/upstream"
)

// Provider faults. A provider that fails (a model, speech or video API answering 5xx, timing out, or a fault
// injected on purpose by the sim) is the upstream's fault, not the agent service's: the RPC answers UNAVAILABLE
// with the upstream.Reason error detail naming the provider, which service clients' circuit breakers ignore.
// Inside the service, each tenant has its own breaker per provider: after repeated failures of one tenant's
// provider, that tenant's calls to it fail fast for a while, and nobody else's are touched.

const (
	defaultProviderBreakerOpenFor = 30 * time.Second
	// maxProviderBreakers bounds the breakers kept (tenants x providers); when full, an arbitrary one is dropped.
	maxProviderBreakers = 10000
)

// providerFault is an error of provider, reported to the caller with the upstream provider-fault detail.
type providerFault struct {
	provider string
	code     connect.Code // 0 means CodeUnavailable
	err      error
}

func (e *providerFault) Error() string { return e.err.Error() }
func (e *providerFault) Unwrap() error { return e.err }

// markProvider wraps err as provider's fault when it is one (it matches model.ErrUnavailable); other errors are
// returned as they are.
func markProvider(provider string, err error) error {
	var pf *providerFault
	if err == nil || errors.As(err, &pf) {
		return err
	}
	if errors.Is(err, model.ErrUnavailable) {
		return &providerFault{provider: provider, err: err}
	}
	return err
}

// simProvider is the registered name of the sim, the provider of agents that name none.
const simProvider = "sim"

// providerOf names a model provider as the registry, the fault detail and the breakers do: the enum value's
// name in lower case without its prefix ("gemini" for PROVIDER_GEMINI), and "sim" for PROVIDER_UNSPECIFIED.
func providerOf(p agentv1.Provider) string {
	if p == agentv1.Provider_PROVIDER_UNSPECIFIED {
		return simProvider
	}
	return strings.ToLower(strings.TrimPrefix(p.String(), "PROVIDER_"))
}

// providerConnectError is connectError's answer for a provider fault.
func providerConnectError(pf *providerFault, msg string) *connect.Error {
	code := pf.code
	if code == 0 {
		code = connect.CodeUnavailable
	}
	return upstream.Mark(connect.NewError(code, errors.New(msg)), pf.provider)
}

// breaker returns tenant's breaker for provider: it opens after 5 consecutive provider faults, or when at least
// half of 20 or more calls in 60 s failed; it stays open for Config.ProviderBreakerOpenFor, then lets one probe
// through.
func (s *Server) breaker(tenant, provider string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	key := tenant + "/" + provider
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if cb, ok := s.breakers[key]; ok {
		return cb
	}
	if len(s.breakers) >= maxProviderBreakers {
		for k := range s.breakers {
			delete(s.breakers, k)
			break
		}
	}
	cb := gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        key,
		MaxRequests: 1,
		Interval:    time.Minute,
		Timeout:     s.cfg.ProviderBreakerOpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= 5 || (c.Requests >= 20 && c.TotalFailures*2 >= c.Requests)
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			s.logger.Warn("agent: provider circuit breaker", "tenant", tenant, "provider", provider,
				"from", from.String(), "to", to.String())
		},
	})
	s.breakers[key] = cb
	return cb
}

// guard runs call under tenant's breaker for provider. An open breaker fails at once with a provider fault; a
// call's provider fault counts against the breaker, anything else (success, a refused request, a cancelled
// context) for it.
func (s *Server) guard(ctx context.Context, tenant, provider string, call func() error) error {
	done, err := s.breaker(tenant, provider).Allow()
	if err != nil {
		return &providerFault{provider: provider, err: fmt.Errorf("%s: %w", provider, errBreakerOpen)}
	}
	err = call()
	done(faultOf(ctx, err))
	return err
}

// errBreakerOpen is the error of a provider call refused by its tenant's open breaker.
var errBreakerOpen = fmt.Errorf("failing repeatedly for this tenant; calls are paused for a while: %w", errUnavailable)

// faultOf returns err when it is a provider fault (what the breaker counts as a failure), else nil.
func faultOf(ctx context.Context, err error) error {
	if err != nil && ctx.Err() == nil && errors.Is(err, model.ErrUnavailable) {
		return err
	}
	return nil
}

// guardedModel is a model behind its tenant's provider breaker.
type guardedModel struct {
	s        *Server
	m        model.Model
	tenant   string
	provider string
}

// Stream implements model.Model.
func (g guardedModel) Stream(ctx context.Context, req model.Request) iter.Seq2[model.Chunk, error] {
	return func(yield func(model.Chunk, error) bool) {
		done, err := g.s.breaker(g.tenant, g.provider).Allow()
		if err != nil {
			yield(model.Chunk{}, fmt.Errorf("%s: %w: %w", g.provider, errBreakerOpen, model.ErrUnavailable))
			return
		}
		for c, err := range g.m.Stream(ctx, req) {
			if err != nil {
				done(faultOf(ctx, err))
				yield(c, err)
				return
			}
			if !yield(c, nil) {
				done(nil)
				return
			}
		}
		done(nil)
	}
}
