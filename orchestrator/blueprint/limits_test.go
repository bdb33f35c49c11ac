package blueprint_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// nested returns the attack: k nested `[0,...,9].all(vN, ...)` macros, 10^k iterations in ~40 bytes each.
func nested(k int) string {
	expr := "true"
	for i := k; i > 0; i-- {
		expr = "[0,1,2,3,4,5,6,7,8,9].all(v" + string(rune('a'+i)) + ", " + expr + ")"
	}
	return expr
}

func branchBlueprint(cond string) *orchestratorv1.Blueprint {
	return &orchestratorv1.Blueprint{Name: "bomb", Steps: []*orchestratorv1.Step{
		{Id: "decide", Kind: &orchestratorv1.Step_Branch{Branch: &orchestratorv1.BranchStep{Condition: cond, ThenSteps: []string{"wait"}}}},
		{Id: "wait", Kind: &orchestratorv1.Step_Delay{Delay: &orchestratorv1.DelayStep{}}},
	}}
}

func TestCostEstimateRefusesNestedMacros(t *testing.T) {
	t.Parallel()
	env, err := blueprint.NewCELEnv(false)
	if err != nil {
		t.Fatal(err)
	}
	limits := blueprint.DefaultLimits()
	for k := 1; k <= 12; k++ {
		expr := nested(k)
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatal(iss.Err())
		}
		est, err := limits.EstimateCost(env, ast)
		if err != nil {
			t.Fatal(err)
		}
		errs := blueprint.Validate(branchBlueprint(expr))
		t.Logf("k=%2d: %4d bytes, estimated worst case %d, refused=%v", k, len(expr), est, len(errs) > 0)
		if refuse := est > limits.Cost; refuse != (len(errs) > 0) {
			t.Errorf("k=%d: estimate %d, errors %v", k, est, errs)
		}
		if k >= 6 {
			if len(errs) != 1 || errs[0].GetPath() != "steps[0].branch.condition" || !strings.Contains(errs[0].GetMessage(), `step "decide"`) ||
				!strings.Contains(errs[0].GetMessage(), "over the limit of 1000000") {
				t.Errorf("k=%d: errors %v, want one naming steps[0].branch.condition and step \"decide\"", k, errs)
			}
		}
		if k <= 4 && len(errs) > 0 {
			t.Errorf("k=%d refused: %v", k, errs)
		}
	}
}

// TestEvalStopsAtCostLimit evaluates an expression that passes the estimate (its lists come from the input) over
// an input far larger than the estimate assumed, and checks that the evaluation stops at the cost limit, quickly.
func TestEvalStopsAtCostLimit(t *testing.T) {
	t.Parallel()
	expr := "input.xs.all(a, input.xs.all(b, a + b >= 0))"
	if errs := blueprint.Validate(branchBlueprint(expr)); len(errs) > 0 {
		t.Fatalf("refused at save: %v", errs)
	}
	env, _ := blueprint.NewCELEnv(false)
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		t.Fatal(iss.Err())
	}
	// The cost limit, alone (a long timeout).
	limits := blueprint.Limits{Timeout: time.Minute}.WithDefaults()
	prg, err := limits.Program(env, ast)
	if err != nil {
		t.Fatal(err)
	}
	xs := make([]any, 700) // 490k inner iterations, about 2M cost units, without a limit
	for i := range xs {
		xs[i] = float64(i)
	}
	input, _ := structpb.NewStruct(map[string]any{"xs": xs})
	vars := map[string]any{"input": input.AsMap(), "steps": map[string]any{}}
	start := time.Now()
	_, err = limits.Eval(context.Background(), prg, vars)
	took := time.Since(start)
	t.Logf("700x700 comprehension: stopped after %v: %v", took, err)
	if !errors.Is(err, blueprint.ErrCostLimit) || !strings.Contains(err.Error(), "1000000 cost units") {
		t.Fatalf("err = %v, want ErrCostLimit", err)
	}
	if took > 5*time.Second {
		t.Errorf("took %v", took)
	}
	// 5000x5000 (25M iterations) stops at the cost limit or the timeout, whichever comes first.
	big := make([]any, 5000)
	for i := range big {
		big[i] = float64(i)
	}
	input, _ = structpb.NewStruct(map[string]any{"xs": big})
	vars = map[string]any{"input": input.AsMap(), "steps": map[string]any{}}
	limits = blueprint.DefaultLimits()
	prg, _ = limits.Program(env, ast)
	start = time.Now()
	_, err = limits.Eval(context.Background(), prg, vars)
	took = time.Since(start)
	t.Logf("5000x5000 comprehension: stopped after %v: %v", took, err)
	if !errors.Is(err, blueprint.ErrCostLimit) && !errors.Is(err, blueprint.ErrEvalTimeout) {
		t.Fatalf("err = %v, want a limit", err)
	}
	if took > limits.Timeout+250*time.Millisecond {
		t.Errorf("took %v", took)
	}
	// Small data passes.
	input, _ = structpb.NewStruct(map[string]any{"xs": []any{1.0, 2.0, 3.0}})
	v, err := limits.Eval(context.Background(), prg, map[string]any{"input": input.AsMap(), "steps": map[string]any{}})
	if err != nil || v.Value() != true {
		t.Fatalf("small input: %v, %v", v, err)
	}
	// A tiny cost limit and a timeout are honoured too.
	small := blueprint.Limits{Cost: 10}
	prg, _ = small.Program(env, ast)
	if _, err := small.Eval(context.Background(), prg, vars); !errors.Is(err, blueprint.ErrCostLimit) {
		t.Errorf("cost 10: %v", err)
	}
	quick := blueprint.Limits{Cost: 1 << 62, Timeout: 20 * time.Millisecond, InterruptCheckEvery: 10}
	prg, _ = quick.Program(env, ast)
	start = time.Now()
	if _, err := quick.Eval(context.Background(), prg, vars); !errors.Is(err, blueprint.ErrEvalTimeout) {
		t.Errorf("timeout: %v", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("timeout honoured after %v", took)
	}
}
