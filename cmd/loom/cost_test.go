package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/pricing"
)

// TestResearchCostEveryLevel runs examples/research.yaml through the real transport with a price table that
// prices the sim, and checks the cost is the same at every level: each agent step's usage is its agent run's
// (read with the agent service's GetRun), the run's is the sum of its steps', and WatchRun's events (read with a
// Connect client while the gRPC client drives the run), GetUsage's rows for the blueprint and EstimateRun agree.
// Then a tenant budget per run fails the research step with ResourceExhausted's reason, without retries, with
// what it spent recorded.
func TestResearchCostEveryLevel(t *testing.T) {
	prices := filepath.Join(t.TempDir(), "prices.yaml")
	if err := os.WriteFile(prices, []byte("version: e2e-1\nmodels:\n  - {provider: sim, model: \"*\", input_per_million: \"1.5\", output_per_million: \"4\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startLoom(t, "--price-table", prices)
	c := dialAll(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, name := range []string{"researcher", "writer"} {
		if _, err := c.agent.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.memory.CreateNamespace(ctx, msg(t, &memoryv1.CreateNamespaceRequest{}, `{"namespace":{"name":"research","dimension":256}}`)); err != nil {
		t.Fatal(err)
	}
	createResearchBlueprint(t, c)
	est, err := c.orch.EstimateRun(ctx, &orchestratorv1.EstimateRunRequest{Blueprint: "research"})
	if err != nil || !est.GetTotal().GetNoHistory() || est.GetSteps()[0].GetBudget().GetAgent() != "researcher" ||
		est.GetSteps()[0].GetBudget().GetMaxDuration().AsDuration() != 5*time.Minute {
		t.Fatalf("EstimateRun without history = %v, %v", est, err)
	}
	before := time.Now().Add(-time.Minute)
	wr, err := c.orch.StartRun(ctx, msg(t, &orchestratorv1.StartRunRequest{}, `{"blueprint":"research","input":{"topic":"octopus cognition"}}`))
	if err != nil {
		t.Fatal(err)
	}
	id := wr.GetRun().GetId()
	watch := orchestratorv1connect.NewOrchestratorServiceClient(http.DefaultClient, "http://"+p.addr)
	events := make(chan []*orchestratorv1.WatchRunResponse, 1)
	go func() {
		var got []*orchestratorv1.WatchRunResponse
		defer func() { events <- got }()
		stream, err := watch.WatchRun(ctx, connect.NewRequest(&orchestratorv1.WatchRunRequest{Id: id}))
		if err != nil {
			return
		}
		for stream.Receive() {
			got = append(got, stream.Msg())
		}
	}()
	approveAndWait(t, c, id)
	got, err := c.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	run := got.GetRun()

	// Each agent step's usage is its agent run's; the other steps have none; the run's is their sum.
	var sum pricing.Nanos
	var tokens int64
	for _, s := range run.GetSteps() {
		u := s.GetUsage()
		switch s.GetStepId() {
		case "research", "summarise":
			agentName := map[string]string{"research": "researcher", "summarise": "writer"}[s.GetStepId()]
			ar, err := c.agent.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: agentName})
			if err != nil || len(ar.GetRuns()) != 1 {
				t.Fatalf("agent runs of %s: %v, %v", agentName, ar, err)
			}
			a, err := c.agent.GetRun(ctx, &agentv1.GetRunRequest{Id: ar.GetRuns()[0].GetId()})
			if err != nil {
				t.Fatal(err)
			}
			au := a.GetRun().GetUsage()
			if a.GetRun().GetBlueprint() != "research" || u.GetAgentRuns() != 1 || u.GetInputTokens() != au.GetInputTokens() ||
				u.GetOutputTokens() != au.GetOutputTokens() || !proto3Equal(u.GetCost(), au.GetCost()) || money(t, u) == 0 {
				t.Errorf("step %s usage %v; its agent run's %v (blueprint %q)", s.GetStepId(), u, au, a.GetRun().GetBlueprint())
			}
			if want := pricing.Nanos(au.GetInputTokens()*1500 + au.GetOutputTokens()*4000); pricing.Nanos(money(t, u)) != want {
				t.Errorf("step %s cost %s, want %s at 1.5 and 4 per million", s.GetStepId(), pricing.Nanos(money(t, u)), want)
			}
		default:
			if u != nil {
				t.Errorf("step %s has usage %v", s.GetStepId(), u)
			}
		}
		sum += pricing.Nanos(money(t, u))
		tokens += u.GetInputTokens() + u.GetOutputTokens()
	}
	total := run.GetUsage()
	if sum == 0 || pricing.Nanos(money(t, total)) != sum || total.GetInputTokens()+total.GetOutputTokens() != tokens || total.GetAgentRuns() != 2 {
		t.Errorf("run usage %v; its steps sum to %s and %d tokens", total, sum, tokens)
	}
	t.Logf("research run: %d tokens, cost %s %s", tokens, sum, total.GetCost().GetCurrencyCode())

	// WatchRun, over Connect: the step outputs carry the steps' usage, the completion the run's.
	cancelWatch := time.AfterFunc(30*time.Second, cancel)
	evs := <-events
	cancelWatch.Stop()
	var completed *orchestratorv1.RunCompleted
	stepUsage := map[string]*orchestratorv1.Usage{}
	for _, ev := range evs {
		if o := ev.GetStepOutput(); o != nil {
			stepUsage[ev.GetStepId()] = o.GetUsage()
		}
		if ev.GetRunCompleted() != nil {
			completed = ev.GetRunCompleted()
		}
	}
	if completed == nil {
		t.Fatalf("WatchRun ended without RunCompleted: %d events", len(evs))
	}
	if diff := cmp.Diff(total, completed.GetUsage(), protocmp.Transform()); diff != "" {
		t.Errorf("RunCompleted usage differs from GetRun's (-get +event):\n%s", diff)
	}
	for _, s := range run.GetSteps() {
		if diff := cmp.Diff(s.GetUsage(), stepUsage[s.GetStepId()], protocmp.Transform()); diff != "" {
			t.Errorf("step %s: StepOutput usage differs from GetRun's (-get +event):\n%s", s.GetStepId(), diff)
		}
	}

	// GetUsage: the blueprint's rows sum to the workflow run's cost.
	u, err := c.agent.GetUsage(ctx, &agentv1.GetUsageRequest{StartTime: timestamppb.New(before)})
	if err != nil {
		t.Fatal(err)
	}
	var bpSum pricing.Nanos
	for _, r := range u.GetRows() {
		if r.GetBlueprint() == "research" {
			n, _ := pricing.FromMoney(r.GetUsage().GetCost())
			bpSum += n
		}
	}
	if bpSum != sum {
		t.Errorf("GetUsage rows of blueprint research sum to %s, the workflow run cost %s", bpSum, sum)
	}
	est, err = c.orch.EstimateRun(ctx, &orchestratorv1.EstimateRunRequest{Blueprint: "research"})
	if err != nil || est.GetTotal().GetSampleSize() != 1 || pricing.Nanos(moneyOf(t, est.GetTotal().GetCostP90())) != sum {
		t.Errorf("EstimateRun after one run = %v, %v", est, err)
	}

	// A per-run budget below one agent call: the research step fails at once with the budget's reason.
	if _, err := c.agent.SetTenantBudget(ctx, &agentv1.SetTenantBudgetRequest{Budget: &agentv1.TenantBudget{
		MaxCostPerRun: pricing.Money(1000, "USD")}}); err != nil {
		t.Fatal(err)
	}
	wr, err = c.orch.StartRun(ctx, msg(t, &orchestratorv1.StartRunRequest{}, `{"blueprint":"research","input":{"topic":"budgets"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var failed *orchestratorv1.WorkflowRun
	for failed == nil {
		r, err := c.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: wr.GetRun().GetId()})
		if err != nil {
			t.Fatal(err)
		}
		switch r.GetRun().GetState() {
		case orchestratorv1.RunState_RUN_STATE_FAILED:
			failed = r.GetRun()
		case orchestratorv1.RunState_RUN_STATE_RUNNING:
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("run under budget ended %v", r.GetRun().GetState())
		}
		if ctx.Err() != nil {
			t.Fatal(errors.New("run under budget did not fail"))
		}
	}
	step := failed.GetSteps()[0]
	if !strings.Contains(failed.GetError(), "tenant.max_cost_per_run") || !strings.Contains(step.GetError(), "ResourceExhausted") ||
		step.GetAttempts() != 1 || money(t, step.GetUsage()) <= 1000 || money(t, failed.GetUsage()) != money(t, step.GetUsage()) {
		t.Errorf("run over budget: error %q, step %v", failed.GetError(), step)
	}
}

func money(t *testing.T, u *orchestratorv1.Usage) int64 { return moneyOf(t, u.GetCost()) }

func moneyOf(t *testing.T, m interface {
	GetUnits() int64
	GetNanos() int32
}) int64 {
	t.Helper()
	return m.GetUnits()*pricing.NanosPerUnit + int64(m.GetNanos())
}

func proto3Equal(a, b interface {
	GetUnits() int64
	GetNanos() int32
	GetCurrencyCode() string
}) bool {
	return a.GetUnits() == b.GetUnits() && a.GetNanos() == b.GetNanos() && a.GetCurrencyCode() == b.GetCurrencyCode()
}
