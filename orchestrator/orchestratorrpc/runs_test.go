package orchestratorrpc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

const twoStepYAML = `name: twostep
steps:
  - id: a
    agent: {agent: x, input: "string(input.n)"}
  - id: b
    depends_on: [a]
    agent: {agent: x, input: "string(steps.a)"}
`

func waitRun(t *testing.T, c clients, tenant, id string, states ...orchestratorv1.RunState) *orchestratorv1.WorkflowRun {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r, err := c.connect.GetRun(context.Background(), request(tenant, &orchestratorv1.GetRunRequest{Id: id}))
		if err != nil {
			t.Fatalf("GetRun() error = %v", err)
		}
		for _, s := range states {
			if r.Msg.GetRun().GetState() == s {
				return r.Msg.GetRun()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s is %s, want one of %v", id, r.Msg.GetRun().GetState(), states)
		}
	}
}

// TestIdempotencyConflictConnect: the same key and request return the first run; the same key with another
// input, or another version of the blueprint, is AlreadyExists naming the key, over Connect and grpc-go.
func TestIdempotencyConflictConnect(t *testing.T) {
	t.Parallel()
	c := startWith(t, &orchestratortest.Agents{})
	ctx := context.Background()
	if _, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(twoStepYAML)})); err != nil {
		t.Fatal(err)
	}
	in := func(n float64) *structpb.Struct {
		s, _ := structpb.NewStruct(map[string]any{"n": n})
		return s
	}
	first, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "twostep", Input: in(1), IdempotencyKey: "k1"}))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "twostep", Input: in(1), IdempotencyKey: "k1"}))
	if err != nil || again.Msg.GetRun().GetId() != first.Msg.GetRun().GetId() {
		t.Fatalf("same key, same request = %v, %v; want run %s", again.Msg.GetRun().GetId(), err, first.Msg.GetRun().GetId())
	}
	_, err = c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "twostep", Input: in(2), IdempotencyKey: "k1"}))
	if ce := wantCode(t, err, connect.CodeAlreadyExists); ce != nil && !strings.Contains(ce.Message(), `"k1"`) {
		t.Errorf("message %q does not name the key", ce.Message())
	}
	// A new version of the blueprint under the same key is another request too.
	if _, err := c.connect.UpdateBlueprint(ctx, request("acme", &orchestratorv1.UpdateBlueprintRequest{Name: "twostep",
		Source: yamlSource(strings.Replace(twoStepYAML, "string(input.n)", "'v2 ' + string(input.n)", 1))})); err != nil {
		t.Fatal(err)
	}
	_, err = c.grpc.StartRun(grpcCtx(t, "acme"), &orchestratorv1.StartRunRequest{Blueprint: "twostep", Input: in(1), IdempotencyKey: "k1"})
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(status.Convert(err).Message(), `"k1"`) {
		t.Errorf("grpc StartRun(new version, same key) = %v, want AlreadyExists naming the key", err)
	}
	pinned, err := c.grpc.StartRun(grpcCtx(t, "acme"), &orchestratorv1.StartRunRequest{Blueprint: "twostep", Version: 1, Input: in(1), IdempotencyKey: "k1"})
	if err != nil || pinned.GetRun().GetId() != first.Msg.GetRun().GetId() {
		t.Errorf("grpc StartRun(version 1, same key) = %v, %v; want the first run", pinned.GetRun().GetId(), err)
	}
}

// TestDeleteRunConnect: an active run cannot be deleted (FailedPrecondition); once cancelled (or finished) it
// is deleted with its events, and is then NotFound; another tenant cannot delete it.
func TestDeleteRunConnect(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	agents := &orchestratortest.Agents{Respond: func(ctx context.Context, req *agentv1.RunRequest) (string, error) {
		if req.GetInput() == "slow" {
			select {
			case <-block:
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		return "ok", nil
	}}
	c := startWith(t, agents)
	ctx := context.Background()
	if _, err := c.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(
		"name: one\nsteps:\n  - id: a\n    agent: {agent: x, input: \"input.what\"}\n")})); err != nil {
		t.Fatal(err)
	}
	start := func(what string) string {
		in, _ := structpb.NewStruct(map[string]any{"what": what})
		r, err := c.connect.StartRun(ctx, request("acme", &orchestratorv1.StartRunRequest{Blueprint: "one", Input: in}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetRun().GetId()
	}
	slow, fast := start("slow"), start("fast")
	waitRun(t, c, "acme", fast, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)

	_, err := c.connect.DeleteRun(ctx, request("acme", &orchestratorv1.DeleteRunRequest{Id: slow}))
	if ce := wantCode(t, err, connect.CodeFailedPrecondition); ce != nil && !strings.Contains(ce.Message(), "cancel it first") {
		t.Errorf("message %q does not say what to do", ce.Message())
	}
	_, err = c.connect.DeleteRun(ctx, request("other", &orchestratorv1.DeleteRunRequest{Id: fast}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = c.connect.DeleteRun(ctx, request("acme", &orchestratorv1.DeleteRunRequest{}))
	if ce := wantCode(t, err, connect.CodeInvalidArgument); ce != nil && !strings.Contains(ce.Message(), "id") {
		t.Errorf("message %q does not name the field", ce.Message())
	}

	if _, err := c.grpc.CancelRun(grpcCtx(t, "acme"), &orchestratorv1.CancelRunRequest{Id: slow}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{slow, fast} {
		if _, err := c.grpc.DeleteRun(grpcCtx(t, "acme"), &orchestratorv1.DeleteRunRequest{Id: id}); err != nil {
			t.Fatalf("DeleteRun(%s) = %v", id, err)
		}
		_, err := c.connect.GetRun(ctx, request("acme", &orchestratorv1.GetRunRequest{Id: id}))
		wantCode(t, err, connect.CodeNotFound)
		_, err = c.grpc.DeleteRun(grpcCtx(t, "acme"), &orchestratorv1.DeleteRunRequest{Id: id})
		if status.Code(err) != codes.NotFound {
			t.Errorf("second DeleteRun(%s) = %v, want NotFound", id, err)
		}
	}
	list, err := c.connect.ListRuns(ctx, request("acme", &orchestratorv1.ListRunsRequest{}))
	if err != nil || len(list.Msg.GetRuns()) != 0 {
		t.Errorf("ListRuns() after deleting = %v, %v", list.Msg.GetRuns(), err)
	}
}
