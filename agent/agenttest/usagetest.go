package agenttest

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pricing"
)

// runUsageTests is the usage ledger's part of the Store contract: a finished run's own usage is what UsageRows
// and UsageTotal sum (by day, agent, blueprint, provider and model, paged, per tenant), its rolled-up usage is
// what GetRun returns, RecentRuns samples successful runs of one version, and tenant budgets replace each other.
func runUsageTests(t *testing.T, newStore func(t *testing.T) agent.Store) {
	ctx := context.Background()
	t.Run("UsageLedger", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		day := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
		usage := func(in, out int64, nanos pricing.Nanos) *agentv1.Usage {
			return &agentv1.Usage{InputTokens: in, OutputTokens: out, Cost: pricing.Money(nanos, "USD"), PriceVersion: "v1"}
		}
		mk := func(tenant, id, agentName, blueprint string, at time.Time, own, delegated *agentv1.Usage) {
			t.Helper()
			total := usage(own.GetInputTokens()+delegated.GetInputTokens(), own.GetOutputTokens()+delegated.GetOutputTokens(),
				mustNanos(t, own)+mustNanos(t, delegated))
			r := &agentv1.Run{Id: id, Agent: agentName, AgentVersion: 1, State: agentv1.RunState_RUN_STATE_RUNNING, Input: "x",
				Provider: agentv1.Provider_PROVIDER_SIM, Model: "sim", Usage: &agentv1.Usage{}, Blueprint: blueprint,
				CreateTime: timestamppb.New(at)}
			if err := s.CreateRun(ctx, tenant, r, agent.Lease{Owner: "me", Until: at.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			r.State, r.EndTime, r.Usage = agentv1.RunState_RUN_STATE_SUCCEEDED, timestamppb.New(at.Add(time.Second)), total
			r.Steps = []*agentv1.Step{{Usage: own, DelegatedUsage: delegated}}
			if err := s.FinishRun(ctx, tenant, r); err != nil {
				t.Fatal(err)
			}
		}
		mk("t1", "r1", "boss", "", day, usage(10, 5, 100), usage(20, 10, 200))
		mk("t1", "r2", "worker", "", day, usage(20, 10, 200), nil)
		mk("t1", "r3", "boss", "research", day.Add(2*time.Hour), usage(1, 1, 7), nil)
		mk("t2", "r4", "boss", "", day, usage(1000, 1000, 1_000_000), nil)

		got, err := s.GetRun(ctx, "t1", "r1")
		if err != nil || got.GetUsage().GetInputTokens() != 30 || mustNanos(t, got.GetUsage()) != 300 || got.GetBlueprint() != "" {
			t.Fatalf("GetRun rolled-up usage = %v, %v", got.GetUsage(), err)
		}
		var rows []agent.UsageRow
		for tok := ""; ; {
			page, next, err := s.UsageRows(ctx, "t1", day.Add(-time.Hour), day.Add(24*time.Hour), 1, tok)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, page...)
			if next == "" {
				break
			}
			tok = next
		}
		want := []struct {
			day, agent, bp string
			in             int64
			cost           pricing.Nanos
		}{{"2026-11-30", "boss", "", 10, 100}, {"2026-11-30", "worker", "", 20, 200}, {"2026-12-01", "boss", "research", 1, 7}}
		if len(rows) != len(want) {
			t.Fatalf("UsageRows = %+v, want %d rows", rows, len(want))
		}
		for i, w := range want {
			r := rows[i]
			if r.Day.Format(time.DateOnly) != w.day || r.Agent != w.agent || r.Blueprint != w.bp || r.Sum.InputTokens != w.in ||
				r.Sum.Cost != w.cost || r.Sum.Runs != 1 || r.Model != "sim" || r.Provider != agentv1.Provider_PROVIDER_SIM {
				t.Errorf("row %d = %+v, want %+v", i, r, w)
			}
		}
		total, err := s.UsageTotal(ctx, "t1", day.Add(-time.Hour), time.Time{})
		if err != nil || total.Runs != 3 || total.Cost != 307 || total.InputTokens != 31 || total.OutputTokens != 16 {
			t.Errorf("UsageTotal = %+v, %v", total, err)
		}
		if _, _, err := s.UsageRows(ctx, "t1", day, day.Add(time.Hour), 1, "garbage"); err == nil {
			t.Error("a malformed page token was accepted")
		}
		samples, err := s.RecentRuns(ctx, "t1", "boss", 1, 10)
		if err != nil || len(samples) != 2 || samples[0].Cost != 7 || samples[1].Cost != 300 || samples[0].Duration != time.Second {
			t.Errorf("RecentRuns = %+v, %v", samples, err)
		}

		b, err := s.GetTenantBudget(ctx, "t1")
		if err != nil || b.GetMaxTokensPerDay() != 0 {
			t.Fatalf("GetTenantBudget with none = %v, %v", b, err)
		}
		for _, n := range []int64{100, 200} {
			if err := s.SetTenantBudget(ctx, "t1", &agentv1.TenantBudget{MaxTokensPerDay: n}); err != nil {
				t.Fatal(err)
			}
		}
		if b, err := s.GetTenantBudget(ctx, "t1"); err != nil || b.GetMaxTokensPerDay() != 200 {
			t.Errorf("GetTenantBudget after two sets = %v, %v", b, err)
		}
		if b, err := s.GetTenantBudget(ctx, "t2"); err != nil || b.GetMaxTokensPerDay() != 0 {
			t.Errorf("another tenant's budget = %v, %v", b, err)
		}
	})
}

func mustNanos(t *testing.T, u *agentv1.Usage) pricing.Nanos {
	t.Helper()
	n, err := pricing.FromMoney(u.GetCost())
	if err != nil {
		t.Fatal(err)
	}
	return n
}
