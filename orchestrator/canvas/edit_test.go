package canvas_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
	"github.com/loom-dev/loom/orchestrator/canvas"
)

// TestRoundTrip turns every golden canvas back into its blueprint: the same steps and lists, with the layout
// added; the blueprint validates; and its canvas, drawn again from the saved layout, is the same canvas. Then it
// moves a node and checks the move survives the next round.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	inputs, err := filepath.Glob("testdata/canvas/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		t.Run(strings.TrimSuffix(filepath.Base(in), ".yaml"), func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			bp := parse(t, src)
			c := canvas.Generate(bp)
			back, errs := canvas.Blueprint(c)
			if len(errs) > 0 {
				t.Fatalf("Blueprint() errors: %v", errs)
			}
			if len(back.GetLayout()) != len(c.GetNodes()) {
				t.Errorf("layout has %d positions for %d nodes", len(back.GetLayout()), len(c.GetNodes()))
			}
			withoutLayout := proto.Clone(back).(*orchestratorv1.Blueprint)
			withoutLayout.Layout = nil
			if diff := cmp.Diff(bp, withoutLayout, protocmp.Transform()); diff != "" {
				t.Errorf("blueprint after the round trip (-want +got):\n%s", diff)
			}
			if errs := blueprint.Validate(back); len(errs) > 0 {
				t.Errorf("the saved blueprint does not validate: %v", errs)
			}
			again := canvas.Generate(back)
			again.Blueprint, c.Blueprint = nil, nil
			if diff := cmp.Diff(c, again, protocmp.Transform()); diff != "" {
				t.Errorf("canvas from the saved layout (-first +again):\n%s", diff)
			}

			// Move the first node; the move is kept, and the edges follow it.
			moved := canvas.Generate(bp)
			n := moved.GetNodes()[0]
			n.X, n.Y = n.GetX()+333, n.GetY()+77
			saved, errs := canvas.Blueprint(moved)
			if len(errs) > 0 {
				t.Fatalf("Blueprint() after a move: %v", errs)
			}
			redrawn := canvas.Generate(saved)
			for _, rn := range redrawn.GetNodes() {
				if rn.GetId() == n.GetId() && (rn.GetX() != n.GetX() || rn.GetY() != n.GetY()) {
					t.Errorf("node %s redrawn at (%v, %v), want (%v, %v)", n.GetId(), rn.GetX(), rn.GetY(), n.GetX(), n.GetY())
				}
			}
			for _, e := range redrawn.GetEdges() {
				if e.GetFrom() == n.GetId() && e.GetPoints()[0].GetX() != n.GetX()+n.GetWidth() {
					t.Errorf("edge %s starts at x=%v, not at the moved node's right edge %v", e.GetId(), e.GetPoints()[0].GetX(), n.GetX()+n.GetWidth())
				}
			}
		})
	}
}

const editBase = `
name: edit
steps:
  - id: a
    agent: {agent: bot, input: "'x'"}
  - id: b
    agent: {agent: bot, input: "'x'"}
  - id: c
    agent: {agent: bot, input: "'x'"}
`

// TestEdits adds and removes edges and steps on a canvas, and checks the blueprint that comes back.
func TestEdits(t *testing.T) {
	t.Parallel()
	base := canvas.Generate(parse(t, []byte(editBase)))
	edit := func(f func(c *orchestratorv1.Canvas)) *orchestratorv1.Blueprint {
		t.Helper()
		c := proto.Clone(base).(*orchestratorv1.Canvas)
		f(c)
		bp, errs := canvas.Blueprint(c)
		if len(errs) > 0 {
			t.Fatalf("Blueprint() errors: %v", errs)
		}
		if errs := blueprint.Validate(bp); len(errs) > 0 {
			t.Fatalf("the edited blueprint does not validate: %v", errs)
		}
		return bp
	}
	step := func(bp *orchestratorv1.Blueprint, id string) *orchestratorv1.Step {
		for _, s := range bp.GetSteps() {
			if s.GetId() == id {
				return s
			}
		}
		t.Fatalf("no step %s", id)
		return nil
	}

	// An added edge is a dependency.
	bp := edit(func(c *orchestratorv1.Canvas) {
		c.Edges = append(c.Edges, &orchestratorv1.Edge{From: "a", To: "c"}, &orchestratorv1.Edge{From: "b", To: "c"})
	})
	if got := step(bp, "c").GetDependsOn(); !cmp.Equal(got, []string{"a", "b"}) {
		t.Errorf("c depends on %v, want [a b]", got)
	}
	// A removed edge is a removed dependency.
	withDeps := canvas.Generate(bp)
	withDeps.Edges = withDeps.Edges[:1]
	bp2, errs := canvas.Blueprint(withDeps)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if got := step(bp2, "c").GetDependsOn(); len(got) != 1 {
		t.Errorf("c depends on %v after removing an edge, want one", got)
	}
	// An added step, with its node, joins the graph; a removed step leaves with its node and edges.
	bp = edit(func(c *orchestratorv1.Canvas) {
		c.Blueprint.Steps = append(c.Blueprint.Steps, &orchestratorv1.Step{Id: "d", Kind: &orchestratorv1.Step_Delay{Delay: &orchestratorv1.DelayStep{}}})
		c.Nodes = append(c.Nodes, &orchestratorv1.Node{Id: "d", X: 900, Y: 40})
		c.Edges = append(c.Edges, &orchestratorv1.Edge{From: "c", To: "d"})
	})
	if got := step(bp, "d").GetDependsOn(); !cmp.Equal(got, []string{"c"}) || bp.GetLayout()["d"].GetX() != 900 {
		t.Errorf("added step d: depends on %v, at %v", got, bp.GetLayout()["d"])
	}
	bp = edit(func(c *orchestratorv1.Canvas) {
		c.Blueprint.Steps = c.Blueprint.Steps[:2]
		c.Nodes = c.Nodes[:0]
		for _, n := range base.GetNodes() {
			if n.GetId() != "c" {
				c.Nodes = append(c.Nodes, n)
			}
		}
	})
	if len(bp.GetSteps()) != 2 || bp.GetLayout()["c"] != nil {
		t.Errorf("removed step c: %v", bp)
	}

	// Edits that cannot be a blueprint name the node or edge.
	for _, tc := range []struct {
		name, path string
		f          func(c *orchestratorv1.Canvas)
	}{
		{"node without a step", "canvas.nodes[3].id", func(c *orchestratorv1.Canvas) { c.Nodes = append(c.Nodes, &orchestratorv1.Node{Id: "ghost"}) }},
		{"step without a node", "canvas.blueprint.steps[2]", func(c *orchestratorv1.Canvas) { c.Nodes = c.Nodes[:2] }},
		{"duplicate node", "canvas.nodes[3].id", func(c *orchestratorv1.Canvas) {
			c.Nodes = append(c.Nodes, proto.Clone(c.Nodes[0]).(*orchestratorv1.Node))
		}},
		{"edge to nowhere", "canvas.edges[0].to", func(c *orchestratorv1.Canvas) { c.Edges = []*orchestratorv1.Edge{{From: "a", To: "zz"}} }},
		{"edge from nowhere", "canvas.edges[0].from", func(c *orchestratorv1.Canvas) { c.Edges = []*orchestratorv1.Edge{{From: "zz", To: "a"}} }},
		{"self edge", "canvas.edges[0]", func(c *orchestratorv1.Canvas) { c.Edges = []*orchestratorv1.Edge{{From: "a", To: "a"}} }},
		{"then from a non-branch", "canvas.edges[0].label", func(c *orchestratorv1.Canvas) { c.Edges = []*orchestratorv1.Edge{{From: "a", To: "b", Label: "then"}} }},
		{"unknown label", "canvas.edges[0].label", func(c *orchestratorv1.Canvas) { c.Edges = []*orchestratorv1.Edge{{From: "a", To: "b", Label: "maybe"}} }},
		{"kind changed on the node", "canvas.nodes[0].kind", func(c *orchestratorv1.Canvas) { c.Nodes[0].Kind = "delay" }},
		{"position out of range", "canvas.nodes[0].x", func(c *orchestratorv1.Canvas) { c.Nodes[0].X = 1e12 }},
		{"no blueprint", "canvas.blueprint", func(c *orchestratorv1.Canvas) { c.Blueprint = nil }},
	} {
		c := proto.Clone(base).(*orchestratorv1.Canvas)
		tc.f(c)
		_, errs := canvas.Blueprint(c)
		found := false
		for _, e := range errs {
			found = found || e.GetPath() == tc.path
		}
		if !found {
			t.Errorf("%s: errors %v, want one at %s", tc.name, errs, tc.path)
		}
	}
	// A cycle made on the canvas is the validator's to refuse.
	bp = func() *orchestratorv1.Blueprint {
		c := proto.Clone(base).(*orchestratorv1.Canvas)
		c.Edges = []*orchestratorv1.Edge{{From: "a", To: "b"}, {From: "b", To: "a"}}
		bp, errs := canvas.Blueprint(c)
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		return bp
	}()
	if errs := blueprint.Validate(bp); len(errs) == 0 {
		t.Error("a cycle drawn on the canvas validated")
	}
}
