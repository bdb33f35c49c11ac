package agent

import (
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/pricing"
)

// ErrResourceExhausted is matched by the error of a run stopped by a budget (see Budgets.max_cost and
// TenantBudget).
var ErrResourceExhausted = fault.ErrResourceExhausted

// UsageSum totals the own usage of runs (their model calls, not the runs they delegated to): what the store
// aggregates for GetUsage and the tenant budgets.
type UsageSum struct {
	// Runs counted.
	Runs int64
	// InputTokens, OutputTokens and CachedInputTokens are token counts.
	InputTokens, OutputTokens, CachedInputTokens int64
	// Cost is the priced part, in nano-units of the price table's currency.
	Cost pricing.Nanos
	// CostUnknown: some usage was of a model the price table does not price.
	CostUnknown bool
}

// UsageRow is the UsageSum of one UTC day, agent, blueprint, provider and model.
type UsageRow struct {
	// Day is midnight UTC of the day.
	Day       time.Time
	Agent     string
	Blueprint string
	Provider  agentv1.Provider
	Model     string
	Sum       UsageSum
}

// OwnUsage returns the usage of r's own model calls: the sum of its steps' usage, without delegated_usage. The
// store keeps it in the run's columns for GetUsage.
func OwnUsage(r *agentv1.Run) UsageSum {
	var s UsageSum
	for _, st := range r.GetSteps() {
		u := st.GetUsage()
		s.InputTokens += u.GetInputTokens()
		s.OutputTokens += u.GetOutputTokens()
		s.CachedInputTokens += u.GetCachedInputTokens()
		c, _ := pricing.FromMoney(u.GetCost())
		s.Cost = pricing.Add(s.Cost, c)
		s.CostUnknown = s.CostUnknown || u.GetCostUnknown()
	}
	return s
}
