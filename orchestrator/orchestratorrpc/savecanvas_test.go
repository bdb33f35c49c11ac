package orchestratorrpc_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

const canvasYAML = `name: flow
steps:
  - id: fetch
    agent: {agent: bot, input: "'x'"}
  - id: check
    depends_on: [fetch]
    branch:
      condition: "steps.fetch.output != ''"
      then_steps: [good]
      else_steps: [bad]
  - id: good
    agent: {agent: bot, input: "'ok'"}
  - id: bad
    agent: {agent: bot, input: "'no'"}
`

// TestSaveCanvas edits a canvas as an editor would (moves a node, adds an edge) and saves it through the real
// transport with both clients: a new version with the new dependency and the saved positions, drawn there by
// GenerateCanvas; then refusals: a node with no step (InvalidArgument naming the node), a stale version
// (Aborted), a name that does not match, another tenant's blueprint (NotFound).
func TestSaveCanvas(t *testing.T) {
	t.Parallel()
	cs := start(t)
	ctx := context.Background()
	if _, err := cs.connect.CreateBlueprint(ctx, request("acme", &orchestratorv1.CreateBlueprintRequest{Source: yamlSource(canvasYAML)})); err != nil {
		t.Fatal(err)
	}
	generated, err := cs.connect.GenerateCanvas(ctx, request("acme", &orchestratorv1.GenerateCanvasRequest{
		Target: &orchestratorv1.GenerateCanvasRequest_Ref{Ref: &orchestratorv1.BlueprintRef{Name: "flow"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := generated.Msg.GetCanvas()
	for _, n := range c.GetNodes() {
		if n.GetId() == "bad" {
			n.X, n.Y = 1234, 567
		}
	}
	c.Edges = append(c.Edges, &orchestratorv1.Edge{From: "fetch", To: "good"})

	saved, err := cs.connect.SaveCanvas(ctx, request("acme", &orchestratorv1.SaveCanvasRequest{Name: "flow", Canvas: c, ExpectedVersion: 1}))
	if err != nil {
		t.Fatalf("SaveCanvas: %v", err)
	}
	bp := saved.Msg.GetBlueprint()
	if bp.GetVersion() != 2 || bp.GetLayout()["bad"].GetX() != 1234 || len(bp.GetLayout()) != 4 {
		t.Fatalf("saved version %d with layout %v", bp.GetVersion(), bp.GetLayout())
	}
	for _, s := range bp.GetSteps() {
		if s.GetId() == "good" && (len(s.GetDependsOn()) != 1 || s.GetDependsOn()[0] != "fetch") {
			t.Errorf("good depends on %v, want [fetch]", s.GetDependsOn())
		}
		if s.GetId() == "check" && s.GetBranch().GetElseSteps()[0] != "bad" {
			t.Errorf("branch lost its else target: %v", s.GetBranch())
		}
	}
	// The stored version draws "bad" where the editor left it, read back with grpc-go.
	again, err := cs.grpc.GenerateCanvas(grpcCtx(t, "acme"), &orchestratorv1.GenerateCanvasRequest{
		Target: &orchestratorv1.GenerateCanvasRequest_Ref{Ref: &orchestratorv1.BlueprintRef{Name: "flow", Version: 2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range again.GetCanvas().GetNodes() {
		if n.GetId() == "bad" && (n.GetX() != 1234 || n.GetY() != 567) {
			t.Errorf("bad drawn at (%v, %v), want (1234, 567)", n.GetX(), n.GetY())
		}
	}

	// Refusals.
	ghost := proto.Clone(c).(*orchestratorv1.Canvas)
	ghost.Nodes = append(ghost.Nodes, &orchestratorv1.Node{Id: "ghost"})
	_, err = cs.grpc.SaveCanvas(grpcCtx(t, "acme"), &orchestratorv1.SaveCanvasRequest{Name: "flow", Canvas: ghost})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "canvas.nodes[4].id") || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("node without a step: %v, want InvalidArgument naming canvas.nodes[4].id", err)
	}
	cycle := proto.Clone(c).(*orchestratorv1.Canvas)
	cycle.Edges = append(cycle.Edges, &orchestratorv1.Edge{From: "good", To: "fetch"})
	_, err = cs.connect.SaveCanvas(ctx, request("acme", &orchestratorv1.SaveCanvasRequest{Name: "flow", Canvas: cycle}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "canvas.blueprint.") {
		t.Errorf("a cycle drawn on the canvas: %v, want InvalidArgument with a canvas.blueprint path", err)
	}
	_, err = cs.connect.SaveCanvas(ctx, request("acme", &orchestratorv1.SaveCanvasRequest{Name: "flow", Canvas: c, ExpectedVersion: 1}))
	if connect.CodeOf(err) != connect.CodeAborted {
		t.Errorf("save over a stale version: %v, want Aborted", err)
	}
	_, err = cs.connect.SaveCanvas(ctx, request("acme", &orchestratorv1.SaveCanvasRequest{Name: "other", Canvas: c}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "canvas.blueprint.name") {
		t.Errorf("name mismatch: %v", err)
	}
	_, err = cs.connect.SaveCanvas(ctx, request("globex", &orchestratorv1.SaveCanvasRequest{Name: "flow", Canvas: c}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("another tenant's save of acme's blueprint: %v, want NotFound", err)
	}
	got, err := cs.connect.GetBlueprint(ctx, request("acme", &orchestratorv1.GetBlueprintRequest{Name: "flow"}))
	if err != nil || got.Msg.GetBlueprint().GetVersion() != 2 {
		t.Errorf("after the refusals the latest version is %d (%v), want 2: nothing half-written", got.Msg.GetBlueprint().GetVersion(), err)
	}
}
