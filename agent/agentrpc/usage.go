package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/principal"
)

// meter prices one run's model calls: the provider and model are fixed for the run, so the price is looked up
// once.
type meter struct {
	currency, version string
	price             pricing.Price
	known             bool
}

func (s *Server) meterFor(provider agentv1.Provider, modelName string) meter {
	p, ok := s.prices.Lookup(providerOf(provider), modelName)
	return meter{currency: s.prices.Currency(), version: s.prices.Version(), price: p, known: ok}
}

// usage returns a model call's usage with its cost. A model without a price is cost_unknown, at zero.
func (m meter) usage(u model.Usage) *agentv1.Usage {
	out := &agentv1.Usage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CachedInputTokens: u.CachedInputTokens,
		Cost: pricing.Money(0, m.currency)}
	if !m.known {
		out.CostUnknown = u.InputTokens+u.OutputTokens > 0
		return out
	}
	out.Cost = pricing.Money(m.price.Tokens(u.InputTokens, u.OutputTokens, u.CachedInputTokens), m.currency)
	out.PriceVersion = m.version
	return out
}

// priceProto is the unit prices the run is charged at, nil when its model has no price.
func (m meter) priceProto() *agentv1.Price {
	if !m.known {
		return nil
	}
	return &agentv1.Price{Version: m.version, InputPerMillion: pricing.Money(m.price.Input, m.currency),
		OutputPerMillion: pricing.Money(m.price.Output, m.currency), CachedInputPerMillion: pricing.Money(m.price.CachedInput, m.currency)}
}

// addUsage adds src to dst: tokens, cost (exactly, in nano-units), cost_unknown; dst keeps its price version
// unless it has none.
func addUsage(dst, src *agentv1.Usage) {
	if src == nil {
		return
	}
	dst.InputTokens += src.GetInputTokens()
	dst.OutputTokens += src.GetOutputTokens()
	dst.CachedInputTokens += src.GetCachedInputTokens()
	if sum := pricing.SumMoney(dst.GetCost(), src.GetCost()); sum != nil {
		dst.Cost = sum
	}
	dst.CostUnknown = dst.GetCostUnknown() || src.GetCostUnknown()
	if dst.GetPriceVersion() == "" {
		dst.PriceVersion = src.GetPriceVersion()
	}
}

func usageProto(u agent.UsageSum, currency string) *agentv1.Usage {
	return &agentv1.Usage{InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CachedInputTokens: u.CachedInputTokens,
		Cost: pricing.Money(u.Cost, currency), CostUnknown: u.CostUnknown}
}

// GetUsage implements agentv1connect.AgentServiceHandler.
func (s *Server) GetUsage(ctx context.Context, req *connect.Request[agentv1.GetUsageRequest]) (*connect.Response[agentv1.GetUsageResponse], error) {
	tenant := principal.TenantOf(ctx)
	end := time.Now().UTC()
	if ts := req.Msg.GetEndTime(); ts != nil {
		end = ts.AsTime()
	}
	start := end.Add(-30 * 24 * time.Hour)
	if ts := req.Msg.GetStartTime(); ts != nil {
		start = ts.AsTime()
	}
	if !start.Before(end) {
		return nil, s.connectError(ctx, &agent.FieldError{Field: "start_time", Reason: "must be before end_time"})
	}
	size := int(req.Msg.GetPageSize())
	if size <= 0 {
		size = 100
	}
	rows, next, err := s.store.UsageRows(ctx, tenant, start, end, size, req.Msg.GetPageToken())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	total, err := s.store.UsageTotal(ctx, tenant, start, end)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	resp := &agentv1.GetUsageResponse{NextPageToken: next, Total: usageProto(total, s.prices.Currency())}
	for _, r := range rows {
		resp.Rows = append(resp.Rows, &agentv1.UsageRow{Day: r.Day.Format(time.DateOnly), Agent: r.Agent, Blueprint: r.Blueprint,
			Provider: r.Provider, Model: r.Model, Runs: r.Sum.Runs, Usage: usageProto(r.Sum, s.prices.Currency())})
	}
	return connect.NewResponse(resp), nil
}

// runSnapshot is r without its steps, for an error detail.
func runSnapshot(r *agentv1.Run) *agentv1.Run {
	c := proto.CloneOf(r)
	c.Steps = nil
	return c
}

// exhaustedError stops a run that reached a budget of cost, or of a tenant: the run is stored FAILED with what it
// spent and the RPC answers ResourceExhausted naming the budget. It matches ErrResourceExhausted.
type exhaustedError struct {
	// budget names the budget, for example "tenant.max_cost_per_day" or "agent.budgets.max_cost".
	budget string
	msg    string
	// run is the stored run, set once it is finished, for the error detail.
	run *agentv1.Run
}

func (e *exhaustedError) Error() string        { return e.msg }
func (e *exhaustedError) Is(target error) bool { return target == agent.ErrResourceExhausted }

func exhausted(budget, format string, args ...any) *exhaustedError {
	return &exhaustedError{budget: budget, msg: fmt.Sprintf("budget %s exhausted: ", budget) + fmt.Sprintf(format, args...)}
}

// exhaustedConnectError is ResourceExhausted with a QuotaFailure detail naming the budget and, once the run is
// stored, the run without its steps (what it spent), so a caller such as a workflow step records the spend.
func exhaustedConnectError(_ context.Context, err error) *connect.Error {
	var ee *exhaustedError
	if !errors.As(err, &ee) {
		return nil // a plain ErrResourceExhausted: the shared mapping answers it
	}
	ce := connect.NewError(connect.CodeResourceExhausted, err)
	if d, derr := connect.NewErrorDetail(&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
		Subject: ee.budget, Description: ee.msg}}}); derr == nil {
		ce.AddDetail(d)
	}
	if ee.run != nil {
		if d, derr := connect.NewErrorDetail(runSnapshot(ee.run)); derr == nil {
			ce.AddDetail(d)
		}
	}
	return ce
}

// countCost counts a model call's cost in the metrics.
func (s *Server) countCost(tenant string, a *agentv1.Agent, modelName string, u *agentv1.Usage) {
	if s.cfg.Metrics == nil {
		return
	}
	n, _ := pricing.FromMoney(u.GetCost())
	s.cfg.Metrics.AddCost(tenant, providerOf(a.GetModel().GetProvider()), modelName, s.prices.Currency(), int64(n), u.GetCostUnknown())
}
