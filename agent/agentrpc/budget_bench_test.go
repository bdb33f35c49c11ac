package agentrpc_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/agenttest"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// BenchmarkBudgetCheckOverhead measures what budget checks add per model call: the same 8-step run (the sim at
// zero latency, 7 memory_search calls then an answer, stored in SQLite) in a tenant without budgets and in one
// with every tenant limit set (day, month and run, tokens and cost) and an agent cost budget, none of them
// reached. The two runs alternate in one loop so drift hits both. Reported: ns/step of each, their ratio, and the
// overhead per model call in ns (two checks per call: before and after).
func BenchmarkBudgetCheckOverhead(b *testing.B) {
	const steps = 8
	ctx := context.Background()
	store, err := sqlstore.New(ctx, sqldbtest.Open(b, sqldb.SQLite))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := agentrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, agenttest.NewMemory(), agentrpc.Config{Prices: pricedSim(b)})
	if err != nil {
		b.Fatal(err)
	}
	turns := searchTurns(b, steps)
	free := principal.NewContext(ctx, principal.Principal{Tenant: "free"})
	limited := principal.NewContext(ctx, principal.Principal{Tenant: "limited"})
	for _, c := range []context.Context{free, limited} {
		a := simAgent("bench", &agentv1.SimScript{Turns: turns}, searchTool)
		a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
		if c == limited {
			a.Budgets = &agentv1.Budgets{MaxCost: pricing.Money(1000*pricing.NanosPerUnit, "USD")}
		}
		if _, err := srv.CreateAgent(c, connect.NewRequest(&agentv1.CreateAgentRequest{Agent: a})); err != nil {
			b.Fatal(err)
		}
	}
	high := pricing.Money(1_000_000*pricing.NanosPerUnit, "USD")
	if _, err := srv.SetTenantBudget(limited, connect.NewRequest(&agentv1.SetTenantBudgetRequest{Budget: &agentv1.TenantBudget{
		MaxTokensPerRun: 1 << 40, MaxCostPerRun: high, MaxTokensPerDay: 1 << 50, MaxCostPerDay: high,
		MaxTokensPerMonth: 1 << 50, MaxCostPerMonth: high}})); err != nil {
		b.Fatal(err)
	}
	run := func(c context.Context) time.Duration {
		start := time.Now()
		resp, err := srv.Run(c, connect.NewRequest(&agentv1.RunRequest{Agent: "bench", Input: "question"}))
		if err != nil {
			b.Fatal(err)
		}
		if len(resp.Msg.GetRun().GetSteps()) != steps {
			b.Fatalf("run has %d steps: %s", len(resp.Msg.GetRun().GetSteps()), resp.Msg.GetRun().GetError())
		}
		return time.Since(start)
	}
	run(free) // warm both paths (the limited tenant's first check reads its budget and spend)
	run(limited)
	var without, with time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			without += run(free)
			with += run(limited)
		} else {
			with += run(limited)
			without += run(free)
		}
	}
	n := float64(b.N) * steps
	b.ReportMetric(float64(without.Nanoseconds())/n, "ns/step-without")
	b.ReportMetric(float64(with.Nanoseconds())/n, "ns/step-with")
	b.ReportMetric(float64(with)/float64(without), "ratio")
	b.ReportMetric(float64((with-without).Nanoseconds())/n, "overhead-ns/call")
	if b.N > 1 {
		fmt.Printf("budget check overhead: %.4fx the run without budgets; %.0f ns per model call (N=%d, %d calls each)\n",
			float64(with)/float64(without), float64((with-without).Nanoseconds())/n, b.N, int(n))
	}
}
