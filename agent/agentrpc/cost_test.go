package agentrpc_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	authv1 "github.com/loom-dev/loom/gen/loom/auth/v1"
	costv1 "github.com/loom-dev/loom/gen/loom/cost/v1"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// pricedSim prices the sim at 1 USD per million input tokens and 2 per million output tokens, so its runs have
// a cost to follow.
func pricedSim(t testing.TB) *pricing.Table {
	t.Helper()
	tab, err := pricing.Parse([]byte(`{"version": "test-1", "models": [{"provider": "sim", "model": "*", "input_per_million": "1", "output_per_million": "2"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

func nanos(t testing.TB, m *costv1.Money) pricing.Nanos {
	t.Helper()
	n, err := pricing.FromMoney(m)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func delegateTool(to string) *agentv1.Tool {
	return &agentv1.Tool{Kind: &agentv1.Tool_Delegate{Delegate: &agentv1.DelegateTool{Agent: to}}}
}

// TestRunCostRollsUp: a run's usage is the sum of its steps' own and delegated usage, a delegated run's figures are
// the ones its parent's step carries, every step is priced at the table's unit prices, and GetRun, ListRuns, the
// stream and GetUsage agree, on SQLite and Postgres, through both clients.
func TestRunCostRollsUp(t *testing.T) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		h := newHarnessOn(t, d, agentrpc.Config{Prices: pricedSim(t)})
		h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
			ctx := asTenant(testCtx(t), t.Name())
			boss, worker := "boss-"+string(d), "worker-"+string(d)
			create(t, ctx, c, simAgent(boss, &agentv1.SimScript{Turns: []*agentv1.SimTurn{
				{WhenContains: "task", ToolCalls: []*agentv1.ToolCall{{Name: "delegate_" + worker, Arguments: args(t, map[string]any{"input": "task from above"})}}},
			}}, delegateTool(worker)))
			create(t, ctx, c, simAgent(worker, &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "done by the worker, at length"}}}))
			before := time.Now().Add(-time.Minute)
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: boss, Input: "a task", Blueprint: "research"})
			if err != nil {
				t.Fatal(err)
			}
			run := resp.GetRun()
			checkRollup(t, run)
			if run.GetPrice().GetVersion() != "test-1" || nanos(t, run.GetPrice().GetOutputPerMillion()) != 2*pricing.NanosPerUnit {
				t.Errorf("price = %v", run.GetPrice())
			}
			res := run.GetSteps()[0].GetToolResults()[0]
			child, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: res.GetResult().GetFields()["run_id"].GetStringValue()})
			if err != nil {
				t.Fatal(err)
			}
			checkRollup(t, child.GetRun())
			if diff := cmp.Diff(child.GetRun().GetUsage(), run.GetSteps()[0].GetDelegatedUsage(), protocmp.Transform()); diff != "" {
				t.Errorf("delegated usage is not the delegated run's (-child +step):\n%s", diff)
			}
			got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: run.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(run.GetUsage(), got.GetRun().GetUsage(), protocmp.Transform()); diff != "" {
				t.Errorf("GetRun usage differs from Run's (-run +get):\n%s", diff)
			}
			list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: boss})
			if err != nil || len(list.GetRuns()) != 1 {
				t.Fatalf("ListRuns = %v, %v", list, err)
			}
			if diff := cmp.Diff(run.GetUsage(), list.GetRuns()[0].GetUsage(), protocmp.Transform()); diff != "" {
				t.Errorf("ListRuns usage differs (-run +list):\n%s", diff)
			}

			// Streamed: the usage events' run totals grow to the final run's usage.
			stream, err := c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: boss, Input: "a task again"})
			if err != nil {
				t.Fatal(err)
			}
			var (
				lastTotal *agentv1.Usage
				final     *agentv1.Run
				id        string
			)
			for {
				ev, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case ev.GetStarted() != nil && id == "":
					id = ev.GetRunId()
				case ev.GetUsage() != nil && ev.GetRunUsage() == nil:
					t.Errorf("usage event without the run's total: %v", ev)
				case ev.GetUsage() != nil && ev.GetRunId() == id:
					lastTotal = ev.GetRunUsage()
				case ev.GetCompleted() != nil:
					final = ev.GetCompleted()
				}
			}
			if final == nil || lastTotal == nil {
				t.Fatalf("stream ended without a completed run (%v) or usage (%v)", final, lastTotal)
			}
			if diff := cmp.Diff(final.GetUsage(), lastTotal, protocmp.Transform()); diff != "" {
				t.Errorf("the last usage event's run total is not the run's (-run +event):\n%s", diff)
			}
			checkRollup(t, final)

			// GetUsage: one row per agent (the delegated run is a row of its own), summing to the total.
			u, err := c.GetUsage(ctx, &agentv1.GetUsageRequest{StartTime: timestamppb.New(before), PageSize: 1})
			if err != nil {
				t.Fatal(err)
			}
			rows := u.GetRows()
			for tok := u.GetNextPageToken(); tok != ""; {
				p, err := c.GetUsage(ctx, &agentv1.GetUsageRequest{StartTime: timestamppb.New(before), PageSize: 1, PageToken: tok})
				if err != nil {
					t.Fatal(err)
				}
				rows, tok = append(rows, p.GetRows()...), p.GetNextPageToken()
			}
			var sum pricing.Nanos
			var runs int64
			byKey := map[string]int64{}
			for _, r := range rows {
				sum += nanos(t, r.GetUsage().GetCost())
				runs += r.GetRuns()
				byKey[r.GetAgent()+"/"+r.GetBlueprint()] += r.GetRuns()
			}
			if runs != 4 || byKey[boss+"/research"] != 1 || byKey[boss+"/"] != 1 || byKey[worker+"/"] != 2 {
				t.Errorf("usage rows count %d runs: %v", runs, byKey)
			}
			want := nanos(t, run.GetUsage().GetCost()) + nanos(t, final.GetUsage().GetCost())
			if sum != want || nanos(t, u.GetTotal().GetCost()) != want {
				t.Errorf("GetUsage rows sum to %s, total %s; want %s (the two boss runs, rolled up)", sum, nanos(t, u.GetTotal().GetCost()), want)
			}
		})
	})
}

// checkRollup checks that run's usage is the sum of its steps' usage and delegated usage, and that each step's
// cost is its tokens at 1 and 2 USD per million.
func checkRollup(t *testing.T, run *agentv1.Run) {
	t.Helper()
	var in, out int64
	var cost pricing.Nanos
	for _, st := range run.GetSteps() {
		u := st.GetUsage()
		if c := nanos(t, u.GetCost()); c != pricing.Nanos(u.GetInputTokens()*1000+u.GetOutputTokens()*2000) {
			t.Errorf("step %d: %d in, %d out cost %s", st.GetIndex(), u.GetInputTokens(), u.GetOutputTokens(), c)
		}
		for _, x := range []*agentv1.Usage{u, st.GetDelegatedUsage()} {
			in, out, cost = in+x.GetInputTokens(), out+x.GetOutputTokens(), cost+nanos(t, x.GetCost())
		}
	}
	u := run.GetUsage()
	if cost == 0 || u.GetInputTokens() != in || u.GetOutputTokens() != out || nanos(t, u.GetCost()) != cost ||
		u.GetCost().GetCurrencyCode() != "USD" || u.GetPriceVersion() != "test-1" || u.GetCostUnknown() {
		t.Errorf("run %s usage %v; steps sum to %d in, %d out, %s", run.GetAgent(), u, in, out, cost)
	}
}

func TestUnknownModelIsNotGuessed(t *testing.T) {
	t.Parallel()
	_, ctx, c := grpcHarness(t, agentrpc.Config{Prices: pricedSim(t), Models: testModels(model.Endpoint{}, model.Endpoint{BaseURL: "http://127.0.0.1:1/v1"})})
	// The sim's default table entry is replaced by the test table's; a table without the sim's entry still
	// prices it at zero.
	tab, _ := pricing.Parse([]byte(`models: []`))
	if p, ok := tab.Lookup("sim", "sim"); !ok || p != (pricing.Price{}) {
		t.Fatalf("sim in an empty table: %+v %v", p, ok)
	}
	if _, ok := tab.Lookup("openai", "gpt-4o"); ok {
		t.Fatal("an unlisted model has a price")
	}
	create(t, ctx, c, simAgent("cheap", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "ok"}}}))
	resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "cheap", Input: "hi"})
	if err != nil || resp.GetRun().GetUsage().GetCostUnknown() {
		t.Fatalf("sim run: %v, %v", resp, err)
	}
}

// TestBudgets: a tenant's daily cost budget, a tenant's per-run token budget and an agent's cost budget each stop
// a run with ResourceExhausted naming the budget; the run is stored FAILED with what it spent; other tenants run
// on. Through both clients (each with tenants of its own).
func TestSpendBudgets(t *testing.T) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		spendBudgets(t, newHarnessOn(t, d, agentrpc.Config{Prices: pricedSim(t)}))
	})
}

func spendBudgets(t *testing.T, h *harness) {
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		kind := "connect"
		if _, ok := c.(connectClient); !ok {
			kind = "grpc"
		}
		limited, free := asTenant(testCtx(t), "limited-"+kind), asTenant(testCtx(t), "free-"+kind)
		loop := &agentv1.SimScript{Turns: []*agentv1.SimTurn{{ToolCalls: []*agentv1.ToolCall{{Name: "memory_search", Arguments: args(t, map[string]any{"query": "go on"})}}}}}
		for _, ctx := range []context.Context{limited, free} {
			a := simAgent("looper", loop, searchTool)
			a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
			a.Budgets = &agentv1.Budgets{MaxSteps: 100}
			create(t, ctx, c, a)
			create(t, ctx, c, simAgent("once", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "ok"}}}))
		}
		// looper makes two model calls, of 34,000 and 50,000 nano-units at 1 and 2 USD per million tokens (25 and 39
		// tokens); once makes one of about 25 tokens.
		if _, err := c.SetTenantBudget(limited, &agentv1.SetTenantBudgetRequest{Budget: &agentv1.TenantBudget{
			MaxCostPerDay: pricing.Money(50_000, "USD")}}); err != nil {
			t.Fatal(err)
		}
		_, err := c.Run(limited, &agentv1.RunRequest{Agent: "looper", Input: "go"})
		run := checkExhausted(t, c, limited, err, "tenant.max_cost_per_day", kind)
		var last pricing.Nanos
		if steps := run.GetSteps(); len(steps) > 0 {
			last = nanos(t, steps[len(steps)-1].GetUsage().GetCost())
		}
		if n := nanos(t, run.GetUsage().GetCost()); n <= 50_000 || n > 50_000+last {
			t.Errorf("the stopped run spent %s, want over the budget of 0.00005 by at most its last call (%s)", n, last)
		}
		// The day is spent: the next run stops before its first model call, having spent nothing.
		_, err = c.Run(limited, &agentv1.RunRequest{Agent: "once", Input: "hi"})
		if run := checkExhausted(t, c, limited, err, "tenant.max_cost_per_day", kind); len(run.GetSteps()) != 0 {
			t.Errorf("a run over the day's budget made %d model calls", len(run.GetSteps()))
		}
		b, err := c.GetTenantBudget(limited, &agentv1.GetTenantBudgetRequest{})
		if err != nil || nanos(t, b.GetDay().GetCost()) <= 50_000 {
			t.Errorf("GetTenantBudget = %v, %v", b, err)
		}
		// Another tenant is unaffected.
		if resp, err := c.Run(free, &agentv1.RunRequest{Agent: "once", Input: "hi"}); err != nil || resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("the other tenant's run: %v, %v", resp, err)
		}

		// A per-run token budget instead: looper stops after a call or two, once reaches it never.
		if _, err := c.SetTenantBudget(limited, &agentv1.SetTenantBudgetRequest{Budget: &agentv1.TenantBudget{MaxTokensPerRun: 40}}); err != nil {
			t.Fatal(err)
		}
		if resp, err := c.Run(limited, &agentv1.RunRequest{Agent: "once", Input: "hi"}); err != nil || resp.GetRun().GetState() != agentv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("a run within the per-run budget: %v, %v", resp, err)
		}
		_, err = c.Run(limited, &agentv1.RunRequest{Agent: "looper", Input: "go"})
		checkExhausted(t, c, limited, err, "tenant.max_tokens_per_run", kind)

		// The agent's own cost budget, in the free tenant.
		a := simAgent("capped", loop, searchTool)
		a.Memory = &agentv1.MemoryConfig{Namespace: "notes"}
		a.Budgets = &agentv1.Budgets{MaxSteps: 100, MaxCost: pricing.Money(10_000, "USD")}
		create(t, free, c, a)
		_, err = c.Run(free, &agentv1.RunRequest{Agent: "capped", Input: "go"})
		checkExhausted(t, c, free, err, "agent.budgets.max_cost", kind)
	})
}

// checkExhausted checks err is ResourceExhausted naming budget, with (on gRPC) the QuotaFailure and the stored run
// in its details, and returns the stored FAILED run.
func checkExhausted(t *testing.T, c agentv1.AgentServiceClient, ctx context.Context, err error, budget, kind string) *agentv1.Run {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), budget) {
		t.Fatalf("err = %v, want ResourceExhausted naming %s", err, budget)
	}
	var run *agentv1.Run
	var quota bool
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *agentv1.Run:
			run = d
		case *errdetails.QuotaFailure:
			quota = len(d.GetViolations()) == 1 && d.GetViolations()[0].GetSubject() == budget
		}
	}
	if kind == "connect" { // the adapter keeps codes and messages only; read the run back by listing
		list, err := c.ListRuns(ctx, &agentv1.ListRunsRequest{PageSize: 1})
		if err != nil || len(list.GetRuns()) == 0 {
			t.Fatalf("ListRuns = %v, %v", list, err)
		}
		run, quota = list.GetRuns()[0], true
	}
	if run == nil || !quota {
		t.Fatalf("details of %v: run %v, quota failure %v", err, run, quota)
	}
	got, err := c.GetRun(ctx, &agentv1.GetRunRequest{Id: run.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetRun().GetState() != agentv1.RunState_RUN_STATE_FAILED || !strings.Contains(got.GetRun().GetError(), budget) {
		t.Fatalf("stored run %s: %v %q", run.GetId(), got.GetRun().GetState(), got.GetRun().GetError())
	}
	return got.GetRun()
}

// TestEstimateAgentRun: no history answers no_history with the bounds of the agent's and the tenant's budgets;
// after runs, the quantiles over them with the sample size.
func TestEstimateAgentRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{Prices: pricedSim(t)})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := asTenant(testCtx(t), "est-"+t.Name())
		a := simAgent("est", &agentv1.SimScript{Turns: []*agentv1.SimTurn{{Reply: "an answer"}}})
		a.Budgets = &agentv1.Budgets{MaxTokens: 5000, MaxCost: pricing.Money(3*pricing.NanosPerUnit, "USD")}
		create(t, ctx, c, a)
		if _, err := c.SetTenantBudget(ctx, &agentv1.SetTenantBudgetRequest{Budget: &agentv1.TenantBudget{
			MaxTokensPerRun: 4000, MaxCostPerRun: pricing.Money(5*pricing.NanosPerUnit, "USD")}}); err != nil {
			t.Fatal(err)
		}
		est, err := c.EstimateRun(ctx, &agentv1.EstimateRunRequest{Agent: "est"})
		if err != nil {
			t.Fatal(err)
		}
		e := est.GetEstimate()
		if !e.GetNoHistory() || e.GetSampleSize() != 0 || e.GetBounds().GetMaxTokens() != 4000 ||
			nanos(t, e.GetBounds().GetMaxCost()) != 3*pricing.NanosPerUnit || e.GetBounds().GetMaxDuration().AsDuration() != 5*time.Minute {
			t.Fatalf("estimate without history = %v", e)
		}
		var costs []pricing.Nanos
		for i := range 5 {
			r, err := c.Run(ctx, &agentv1.RunRequest{Agent: "est", Input: strings.Repeat("word ", i+1)})
			if err != nil {
				t.Fatal(err)
			}
			costs = append(costs, nanos(t, r.GetRun().GetUsage().GetCost()))
		}
		est, err = c.EstimateRun(ctx, &agentv1.EstimateRunRequest{Agent: "est"})
		if err != nil {
			t.Fatal(err)
		}
		e = est.GetEstimate()
		// Inputs of 1 to 5 words: costs rise with the input, so p50 is the third and p90 the fifth.
		if e.GetNoHistory() || e.GetSampleSize() != 5 || nanos(t, e.GetCostP50()) != costs[2] || nanos(t, e.GetCostP90()) != costs[4] ||
			e.GetDurationP90().AsDuration() <= 0 {
			t.Fatalf("estimate after 5 runs (costs %v) = %v", costs, e)
		}
	})
}

// TestUsageRoles: the contract gives GetUsage, GetTenantBudget and EstimateRun to readers and SetTenantBudget to
// admins only; the authorization interceptor enforces what it declares.
func TestUsageRoles(t *testing.T) {
	t.Parallel()
	sd := agentv1.File_loom_agent_v1_agent_proto.Services().ByName("AgentService")
	for name, want := range map[string]authv1.Role{"GetUsage": authv1.Role_ROLE_READER, "GetTenantBudget": authv1.Role_ROLE_READER,
		"EstimateRun": authv1.Role_ROLE_READER, "SetTenantBudget": authv1.Role_ROLE_ADMIN} {
		m := sd.Methods().ByName(protoreflect.Name(name))
		if got := proto.GetExtension(m.Options(), authv1.E_RequiredRole).(authv1.Role); got != want {
			t.Errorf("%s requires %v, want %v", name, got, want)
		}
	}
}
