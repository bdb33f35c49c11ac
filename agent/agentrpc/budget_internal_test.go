package agentrpc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/model"
	simmodel "github.com/loom-dev/loom/agent/model/sim"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pricing"
)

// memBudgetStore is the part of Store the budget checks read, in memory.
type memBudgetStore struct {
	agent.Store
	budget *agentv1.TenantBudget
}

func (m memBudgetStore) GetTenantBudget(context.Context, string) (*agentv1.TenantBudget, error) {
	return m.budget, nil
}

func (m memBudgetStore) UsageTotal(context.Context, string, time.Time, time.Time) (agent.UsageSum, error) {
	return agent.UsageSum{}, nil
}

// BenchmarkBudgetCheckPerModelCall times what the loop adds per model call for budgets (a check before the call
// and one after, with every tenant limit and an agent cost budget set, none reached) against a sim model call
// with zero latency, the cheapest model call there is. Reported: ns per model call, ns of the two checks, and
// (call + checks) / call.
func BenchmarkBudgetCheckPerModelCall(b *testing.B) {
	ctx := context.Background()
	high := pricing.Money(1_000_000*pricing.NanosPerUnit, "USD")
	s := &Server{prices: pricing.Default(), budgets: newBudgets(memBudgetStore{budget: &agentv1.TenantBudget{
		MaxTokensPerRun: 1 << 40, MaxCostPerRun: high, MaxTokensPerDay: 1 << 50, MaxCostPerDay: high,
		MaxTokensPerMonth: 1 << 50, MaxCostPerMonth: high}}, time.Hour, "USD")}
	env := runEnv{tenant: "t", agent: &agentv1.Agent{Name: "a", Budgets: &agentv1.Budgets{MaxCost: high}}, meter: s.meterFor(agentv1.Provider_PROVIDER_SIM, "sim")}
	run := &agentv1.Run{Id: "r", Usage: env.meter.usage(model.Usage{})}
	step := env.meter.usage(model.Usage{InputTokens: 100, OutputTokens: 20})
	sim := simmodel.New(&agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "the answer is forty two"}}}, 1)
	req := model.Request{System: "You help.", Messages: []model.Message{{Role: model.RoleUser, Text: "question"}}}

	simStart := time.Now()
	for range b.N {
		for _, err := range sim.Stream(ctx, req) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	perCall := float64(time.Since(simStart).Nanoseconds()) / float64(b.N)

	b.ResetTimer()
	for range b.N {
		if err := s.checkBudgets(ctx, env, run, nil, true); err != nil {
			b.Fatal(err)
		}
		if err := s.checkBudgets(ctx, env, run, step, false); err != nil {
			b.Fatal(err)
		}
	}
	checks := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(perCall, "ns/model-call")
	b.ReportMetric(checks, "ns/checks")
	b.ReportMetric((perCall+checks)/perCall, "ratio")
	if b.N > 1000 {
		fmt.Printf("budget checks per model call: %.0f ns against a %.0f ns sim call: ratio %.4f\n", checks, perCall, (perCall+checks)/perCall)
	}
}
