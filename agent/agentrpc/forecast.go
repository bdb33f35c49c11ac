package agentrpc

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/forecast"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/principal"
)

const defaultEstimateWindow = 200

// EstimateRun implements agentv1connect.AgentServiceHandler: quantiles over the latest version's recent
// successful runs, and the configured per-run bounds.
func (s *Server) EstimateRun(ctx context.Context, req *connect.Request[agentv1.EstimateRunRequest]) (*connect.Response[agentv1.EstimateRunResponse], error) {
	tenant := principal.TenantOf(ctx)
	a, err := s.store.GetAgent(ctx, tenant, req.Msg.GetAgent(), 0)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	window := int(req.Msg.GetWindow())
	if window <= 0 {
		window = defaultEstimateWindow
	}
	samples, err := s.store.RecentRuns(ctx, tenant, a.GetName(), a.GetVersion(), window)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	bud, err := s.store.GetTenantBudget(ctx, tenant)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	cur := s.prices.Currency()
	est := &agentv1.Estimate{SampleSize: int32(len(samples)), NoHistory: len(samples) == 0, Bounds: runBounds(a, bud, cur)}
	if len(samples) > 0 {
		durs, costs := make([]int64, len(samples)), make([]int64, len(samples))
		for i, r := range samples {
			durs[i], costs[i] = int64(r.Duration), int64(r.Cost)
		}
		d, c := forecast.Summarize(durs), forecast.Summarize(costs)
		est.DurationP50, est.DurationP90, est.DurationP99 = durationpb.New(time.Duration(d.P50)), durationpb.New(time.Duration(d.P90)), durationpb.New(time.Duration(d.P99))
		est.CostP50, est.CostP90, est.CostP99 = pricing.Money(pricing.Nanos(c.P50), cur), pricing.Money(pricing.Nanos(c.P90), cur), pricing.Money(pricing.Nanos(c.P99), cur)
	}
	return connect.NewResponse(&agentv1.EstimateRunResponse{Estimate: est}), nil
}

// runBounds is the lower of the agent's and the tenant's per-run limits.
func runBounds(a *agentv1.Agent, b *agentv1.TenantBudget, currency string) *agentv1.Bounds {
	out := &agentv1.Bounds{MaxTokens: a.GetBudgets().GetMaxTokens(), MaxDuration: durationpb.New(defaultMaxDuration)}
	if d := a.GetBudgets().GetMaxDuration(); d != nil && d.AsDuration() > 0 {
		out.MaxDuration = d
	}
	if t := b.GetMaxTokensPerRun(); t > 0 && (out.MaxTokens == 0 || t < out.MaxTokens) {
		out.MaxTokens = t
	}
	ac, _ := pricing.FromMoney(a.GetBudgets().GetMaxCost())
	tc, _ := pricing.FromMoney(b.GetMaxCostPerRun())
	switch {
	case ac > 0 && (tc <= 0 || ac <= tc):
		out.MaxCost = pricing.Money(ac, currency)
	case tc > 0:
		out.MaxCost = pricing.Money(tc, currency)
	}
	return out
}
