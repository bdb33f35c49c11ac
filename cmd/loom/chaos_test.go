package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// TestChaosExample runs examples/chaos.yaml on `loom serve`: the flaky step's first two attempts fail with the
// injected transient fault, the retry policy takes the third through, the run succeeds, and WatchRun shows the
// two retries with their error; the same seed and attempts give the same faults on a second run. The injected
// failures never open the service breaker: the next step, on the same agent service, runs at once.
func TestChaosExample(t *testing.T) {
	p := startLoom(t)
	c := dialAll(t, p.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := c.agent.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "helper", Instructions: "Be brief."}}); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("../../examples/chaos.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.orch.CreateBlueprint(ctx, &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: string(src)}}}); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		started, err := c.orch.StartRun(ctx, &orchestratorv1.StartRunRequest{Blueprint: "chaos-retry"})
		if err != nil {
			t.Fatal(err)
		}
		id := started.GetRun().GetId()
		stream, err := c.orch.WatchRun(ctx, &orchestratorv1.WatchRunRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		var retries []*orchestratorv1.StepRetry
		for {
			ev, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("WatchRun: %v", err)
			}
			if r := ev.GetStepRetry(); r != nil {
				retries = append(retries, r)
			}
		}
		got, err := c.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		run := got.GetRun()
		if run.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("round %d: run %s is %s (%s), want SUCCEEDED", round, id, run.GetState(), run.GetError())
		}
		for _, s := range run.GetSteps() {
			want := int32(1)
			if s.GetStepId() == "flaky" {
				want = 3
			}
			if s.GetAttempts() != want {
				t.Errorf("round %d: step %s took %d attempts, want %d", round, s.GetStepId(), s.GetAttempts(), want)
			}
		}
		if len(retries) != 2 {
			t.Fatalf("round %d: %d StepRetry events, want 2 (attempts 1 and 2 fail)", round, len(retries))
		}
		for i, r := range retries {
			if r.GetAttempt() != int32(i+1) || !strings.Contains(strings.ToLower(r.GetError()), "chaos") {
				t.Errorf("round %d: retry %d = attempt %d, error %q; want attempt %d failing by chaos", round, i, r.GetAttempt(), r.GetError(), i+1)
			}
		}
		t.Logf("round %d: run %s succeeded after %d retries: %q then %q", round, id, len(retries), retries[0].GetError(), retries[1].GetError())
	}
}
