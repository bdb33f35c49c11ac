package orchestratorrpc_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

// nestedAll is the attack: k nested `[0,...,9].all(v, ...)` macros, 10^k iterations in ~31 bytes each.
func nestedAll(k int) string {
	expr := "true"
	for i := k; i > 0; i-- {
		expr = fmt.Sprintf("[0,1,2,3,4,5,6,7,8,9].all(v%d, %s)", i, expr)
	}
	return expr
}

func bombYAML(name, cond string) string {
	return fmt.Sprintf(`name: %s
steps:
  - id: fetch
    agent: {agent: echo, input: "'go'"}
  - id: decide
    depends_on: [fetch]
    branch: {condition: %q, then_steps: [after]}
  - id: after
    agent: {agent: echo, input: "'done'"}
`, name, cond)
}

// TestExpressionCostRefusedAtSave: k=8 nested macros (10^8 iterations) are refused by CreateBlueprint,
// UpdateBlueprint and ValidateBlueprint, over both clients, with InvalidArgument naming the step and the field;
// k=5 is accepted.
func TestExpressionCostRefusedAtSave(t *testing.T) {
	t.Parallel()
	c := start(t)
	ctx := context.Background()
	refused, tried := 0, 0
	for k := 1; k <= 12; k++ {
		name := fmt.Sprintf("bomb%d", k)
		_, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(bombYAML(name, nestedAll(k)))}))
		tried++
		if k <= 5 {
			if err != nil {
				t.Errorf("k=%d: CreateBlueprint() error = %v, want accepted", k, err)
			}
			continue
		}
		if ce := wantCode(t, err, connect.CodeInvalidArgument); ce != nil {
			refused++
			if !strings.Contains(ce.Message(), "steps[1].branch.condition") || !strings.Contains(ce.Message(), `step "decide"`) ||
				!strings.Contains(ce.Message(), "over the limit of 1000000") {
				t.Errorf("k=%d: message %q does not name the step, the field and the limit", k, ce.Message())
			}
		}
	}
	t.Logf("CreateBlueprint: k=1..12 tried %d, k>=6 refused %d (of 7)", tried, refused)
	// k=8 over grpc-go, on create, update and validate.
	gctx := grpcCtx(t, "acme")
	_, err := c.grpc.CreateBlueprint(gctx, &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(bombYAML("bomb8", nestedAll(8)))})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "steps[1].branch.condition") {
		t.Errorf("grpc CreateBlueprint(k=8) = %v, want InvalidArgument naming the field", err)
	}
	_, err = c.grpc.UpdateBlueprint(gctx, &orchestratorv1.UpdateBlueprintRequest{Name: "bomb1", Source: yamlSource(bombYAML("bomb1", nestedAll(8)))})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), `step "decide"`) {
		t.Errorf("grpc UpdateBlueprint(k=8) = %v, want InvalidArgument naming the step", err)
	}
	v, err := c.grpc.ValidateBlueprint(gctx, &orchestratorv1.ValidateBlueprintRequest{Source: yamlSource(bombYAML("bomb8", nestedAll(8)))})
	if err != nil || len(v.GetErrors()) != 1 || v.GetErrors()[0].GetPath() != "steps[1].branch.condition" || v.GetErrors()[0].GetLine() != 7 {
		t.Errorf("ValidateBlueprint(k=8) = %v, %v; want one error at steps[1].branch.condition, line 7", v, err)
	}
}

// TestExpressionCostStopsAtRunTime runs a blueprint whose branch condition passes the static estimate (its lists
// come from the input) over an input that makes it cost 25M iterations: the step fails with a clear reason
// within the limits, and meanwhile another tenant's StartRun calls are not held up by the evaluation.
func TestExpressionCostStopsAtRunTime(t *testing.T) {
	t.Parallel()
	// The evaluation may run for up to 2 s here (250 ms by default), so that a transaction held during it would
	// stop other tenants' writes for long enough to see, whatever the machine's load.
	c, _ := startWithEngine(t, &orchestratortest.Agents{}, engine.Config{
		FetchPollInterval: 50 * time.Millisecond,
		Expressions:       blueprint.Limits{Timeout: 2 * time.Second},
	})
	ctx := context.Background()
	const cond = "input.xs.all(a, input.xs.all(b, a + b >= 0))"
	for _, tenant := range []string{"acme", "other"} {
		if _, err := c.connect.CreateBlueprint(ctx, request(tenant, &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(bombYAML("heavy", cond))})); err != nil {
			t.Fatalf("CreateBlueprint(%s): %v", tenant, err)
		}
	}
	xs := make([]any, 5000)
	for i := range xs {
		xs[i] = float64(i)
	}
	heavy, _ := structpb.NewStruct(map[string]any{"xs": xs})
	light, _ := structpb.NewStruct(map[string]any{"xs": []any{1.0}})

	// Another tenant starts runs all along; each StartRun writes in a transaction of its own.
	stop := make(chan struct{})
	var (
		mu     sync.Mutex
		worst  time.Duration
		starts int
		ends   []time.Time // when each of the other tenant's StartRun calls returned
	)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			_, err := c.grpc.StartRun(grpcCtx(t, "other"), &orchestratorv1.StartRunRequest{Blueprint: "heavy", Input: light})
			d := time.Since(t0)
			if err != nil {
				t.Errorf("other tenant's StartRun: %v", err)
				return
			}
			mu.Lock()
			starts++
			worst = max(worst, d)
			ends = append(ends, t0.Add(d))
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	began := time.Now()
	run, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "heavy", Input: heavy}))
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	var got *orchestratorv1.WorkflowRun
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		r, err := c.connect.GetRun(ctx, request("acme", &orchestratorv1.GetRunRequest{Id: run.Msg.GetRun().GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		if got = r.Msg.GetRun(); got.GetState() == orchestratorv1.RunState_RUN_STATE_FAILED || got.GetState() == orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			break
		}
	}
	took := time.Since(began)
	finished := time.Now()
	close(stop)
	wg.Wait()
	if got.GetState() != orchestratorv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("run = %v, want FAILED", got)
	}
	var reason string
	for _, s := range got.GetSteps() {
		if s.GetStepId() == "decide" {
			reason = s.GetError()
		}
	}
	if !strings.Contains(reason, "expression") || !(strings.Contains(reason, "cost limit exceeded") || strings.Contains(reason, "timed out")) {
		t.Errorf("decide failed with %q; want a reason naming the expression limit", reason)
	}
	mu.Lock()
	defer mu.Unlock()
	// Had the evaluation held the (single) SQLite writer, no other StartRun could have returned while it ran:
	// count those that returned between the heavy run's start and its failure, leaving out the first and last
	// 300 ms, when the run had not reached the condition yet or had already failed. A count, not a latency, so a
	// loaded machine cannot make it flake.
	within := 0
	for _, e := range ends {
		if e.After(started.Add(300*time.Millisecond)) && e.Before(finished.Add(-300*time.Millisecond)) {
			within++
		}
	}
	t.Logf("heavy run failed after %v: %q; meanwhile the other tenant started %d runs (%d returned while the heavy run evaluated), the slowest in %v",
		took, reason, starts, within, worst)
	if took < time.Second {
		t.Fatalf("the heavy run failed after %v, before its 2 s evaluation limit could be reached", took)
	}
	if within == 0 {
		t.Errorf("no other tenant's StartRun returned while the heavy run's condition was evaluated: the evaluation held a transaction")
	}
}
