package engine_test

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

// costDist is the known distribution of an agent run's cost in the generated history: log-normal, median
// e^10 ≈ 22,026 nano-units, sigma 0.6 (the long right tail model costs have).
func costDist(rng *rand.Rand) int64 { return int64(math.Exp(rng.NormFloat64()*0.6 + 10)) }

// TestEstimateCoverage runs a generated history of 200 one-step runs through the engine, each agent run costing
// a draw from costDist, asks for the forecast, and checks its p90 against 20,000 held-out draws of the same
// distribution: it must cover 90% ± 5% of them. Then a run costing far above the p99 is flagged as an anomaly
// and counted, and one within it is not.
func TestEstimateCoverage(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		var (
			mu   sync.Mutex
			rng  = rand.New(rand.NewPCG(7, 13))
			next func() int64
		)
		next = func() int64 { return costDist(rng) }
		agents := &orchestratortest.Agents{Usage: func(*agentv1.RunRequest) *agentv1.Usage {
			mu.Lock()
			defer mu.Unlock()
			return &agentv1.Usage{InputTokens: 100, OutputTokens: 10, Cost: pricing.Money(pricing.Nanos(next()), "USD")}
		}}
		metrics := engine.NewMetrics()
		e := newEnv(t, d, agents, func(c *engine.Config) { c.Metrics = metrics; c.Workers = 16 })
		bp := e.create(t, `
name: costly
steps:
  - id: ask
    agent: {agent: asker, input: "'x'"}
`)
		ctx := context.Background()
		est, err := e.engine.Forecast(ctx, tenant, bp, 0)
		if err != nil || !est.GetTotal().GetNoHistory() || est.GetTotal().GetSampleSize() != 0 {
			t.Fatalf("Forecast without history = %v, %v", est, err)
		}
		const history = 200
		ids := make([]string, history)
		for i := range ids {
			r, err := e.engine.StartRun(ctx, tenant, bp, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			ids[i] = r.GetId()
		}
		for _, id := range ids {
			e.waitFor(t, id, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
		}
		est, err = e.engine.Forecast(ctx, tenant, bp, history)
		if err != nil {
			t.Fatal(err)
		}
		total, step := est.GetTotal(), est.GetSteps()[0].GetForecast()
		if total.GetSampleSize() != history || step.GetSampleSize() != history || total.GetNoHistory() {
			t.Fatalf("sample sizes: total %d, step %d", total.GetSampleSize(), step.GetSampleSize())
		}
		p90, _ := pricing.FromMoney(total.GetCostP90())
		if s, _ := pricing.FromMoney(step.GetCostP90()); s != p90 {
			t.Errorf("one-step blueprint: step p90 %s, total p90 %s", s, p90)
		}
		held := rand.New(rand.NewPCG(99, 100))
		covered := 0
		const heldOut = 20000
		for range heldOut {
			if costDist(held) <= int64(p90) {
				covered++
			}
		}
		coverage := float64(covered) / heldOut
		t.Logf("%s: p90 %s over %d runs covers %.4f of %d held-out runs (true p90 %.0f)", d, p90, history, coverage, heldOut,
			math.Exp(10+0.6*1.2815515655446004))
		if math.Abs(coverage-0.9) > 0.05 {
			t.Errorf("coverage %.4f, want 0.90 ± 0.05", coverage)
		}

		// Anomalies: a run 100x the median is flagged (cost), a median one is not.
		p99, _ := pricing.FromMoney(total.GetCostP99())
		// Some of the history was flagged already: about 1% of the runs after the 20th are above the p99 of
		// the runs before them.
		before := anomalies(t, metrics, "cost")
		t.Logf("%s: %v of the %d generated runs flagged as cost anomalies", d, before, history)
		for _, tc := range []struct {
			cost    int64
			flagged bool
		}{{cost: 100 * 22026, flagged: true}, {cost: 22026, flagged: false}} {
			mu.Lock()
			next = func() int64 { return tc.cost }
			mu.Unlock()
			r, err := e.engine.StartRun(ctx, tenant, bp, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			e.waitFor(t, r.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
			var got *orchestratorv1.WorkflowRun
			for range 100 { // the flag is written right after the run's last commit
				if got, err = e.engine.GetRun(ctx, tenant, r.GetId()); err != nil || got.GetAnomaly() != nil || !tc.flagged {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if (got.GetAnomaly().GetCost()) != tc.flagged {
				t.Errorf("run costing %d (p99 %s): anomaly %v", tc.cost, p99, got.GetAnomaly())
			}
		}
		if n := anomalies(t, metrics, "cost"); n != before+1 {
			t.Errorf("loom_workflow_run_anomalies_total{kind=cost} = %v, want %v", n, before+1)
		}
	})
}

// anomalies reads loom_workflow_run_anomalies_total{kind} from m.
func anomalies(t *testing.T, m *engine.Metrics, kind string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "loom_workflow_run_anomalies_total" {
			continue
		}
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return mt.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}
