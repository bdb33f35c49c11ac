package canvas

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// maxCoordinate bounds a node's position, as the contract bounds a layout point.
const maxCoordinate = 1e6

// Blueprint turns an edited canvas back into a blueprint: the steps of c's blueprint, with their dependencies,
// branch targets and parallel members rebuilt from the canvas's edges and groups, and every node's position in
// the layout. It checks what only the canvas can get wrong (a node without a step, an edge to nowhere, a branch
// label on a step that is not a branch) and names the node or edge; the blueprint's own rules are the
// validator's, run on the result. The mapping is Generate's, inverted:
//   - an edge labelled "then" or "else" is a target of its source, which must be a branch step;
//   - an unlabelled edge from a parallel step to a node in that step's group is a member of the block;
//   - any other unlabelled edge means its target depends on its source.
//
// Lists keep the order they had in the blueprint; entries the edit added follow, in edge order. So a canvas
// that Generate made gives back its blueprint, with the layout added.
func Blueprint(c *orchestratorv1.Canvas) (*orchestratorv1.Blueprint, []*orchestratorv1.ValidationError) {
	var errs []*orchestratorv1.ValidationError
	fail := func(path, format string, args ...any) {
		errs = append(errs, &orchestratorv1.ValidationError{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	if c.GetBlueprint() == nil {
		fail("canvas.blueprint", "is required: the steps of the canvas")
		return nil, errs
	}
	bp := proto.Clone(c.GetBlueprint()).(*orchestratorv1.Blueprint)
	steps := map[string]*orchestratorv1.Step{}
	for i, s := range bp.GetSteps() {
		if _, dup := steps[s.GetId()]; dup {
			fail("canvas.blueprint.steps["+strconv.Itoa(i)+"].id", "step %q appears twice", s.GetId())
			continue
		}
		steps[s.GetId()] = s
	}

	// Nodes: exactly one per step, in range.
	layout := map[string]*orchestratorv1.Point{}
	for i, n := range c.GetNodes() {
		path := "canvas.nodes[" + strconv.Itoa(i) + "]"
		s, ok := steps[n.GetId()]
		switch {
		case !ok:
			fail(path+".id", "node %q has no step in canvas.blueprint.steps: add the step there, or remove the node", n.GetId())
			continue
		case layout[n.GetId()] != nil:
			fail(path+".id", "node %q appears twice", n.GetId())
			continue
		case n.GetKind() != "" && n.GetKind() != Kind(s):
			fail(path+".kind", "node %q is drawn as %q but its step is %q: change the step, not the node", n.GetId(), n.GetKind(), Kind(s))
		}
		for _, axis := range []struct {
			name string
			v    float64
		}{{"x", n.GetX()}, {"y", n.GetY()}} {
			if math.IsNaN(axis.v) || math.Abs(axis.v) > maxCoordinate {
				fail(path+"."+axis.name, "must be a number within +-%g", maxCoordinate)
			}
		}
		layout[n.GetId()] = &orchestratorv1.Point{X: n.GetX(), Y: n.GetY()}
	}
	for i, s := range bp.GetSteps() {
		if layout[s.GetId()] == nil && s.GetId() != "" {
			fail("canvas.blueprint.steps["+strconv.Itoa(i)+"]", "step %q has no node on the canvas: add a node with its id, or remove the step", s.GetId())
		}
	}

	// Groups say which nodes belong to a parallel block.
	members := map[string]map[string]bool{}
	for i, g := range c.GetGroups() {
		s, ok := steps[g.GetId()]
		if !ok {
			fail("canvas.groups["+strconv.Itoa(i)+"].id", "group %q is not a step", g.GetId())
			continue
		}
		if s.GetParallel() == nil {
			continue // a map step's box holds only itself
		}
		in := map[string]bool{}
		for _, id := range g.GetNodeIds() {
			in[id] = true
		}
		members[g.GetId()] = in
	}

	// Edges rebuild every list the canvas draws.
	type lists struct{ deps, then, els, members []string }
	edited := map[string]*lists{}
	for id := range steps {
		edited[id] = &lists{}
	}
	for i, e := range c.GetEdges() {
		path := "canvas.edges[" + strconv.Itoa(i) + "]"
		from, okFrom := steps[e.GetFrom()]
		_, okTo := steps[e.GetTo()]
		switch {
		case !okFrom:
			fail(path+".from", "edge from %q, which is not a step", e.GetFrom())
			continue
		case !okTo:
			fail(path+".to", "edge to %q, which is not a step", e.GetTo())
			continue
		case e.GetFrom() == e.GetTo():
			fail(path, "edge from %q to itself", e.GetFrom())
			continue
		}
		switch e.GetLabel() {
		case "then", "else":
			if from.GetBranch() == nil {
				fail(path+".label", "a %q edge must start at a branch step; %q is %q", e.GetLabel(), e.GetFrom(), Kind(from))
				continue
			}
			l := edited[e.GetFrom()]
			if e.GetLabel() == "then" {
				l.then = appendNew(l.then, e.GetTo())
			} else {
				l.els = appendNew(l.els, e.GetTo())
			}
		case "":
			if from.GetParallel() != nil && members[e.GetFrom()][e.GetTo()] {
				edited[e.GetFrom()].members = appendNew(edited[e.GetFrom()].members, e.GetTo())
				continue
			}
			edited[e.GetTo()].deps = appendNew(edited[e.GetTo()].deps, e.GetFrom())
		default:
			fail(path+".label", "unknown label %q: an edge is unlabelled, \"then\" or \"else\"", e.GetLabel())
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	for _, s := range bp.GetSteps() {
		l := edited[s.GetId()]
		s.DependsOn = keepOrder(s.GetDependsOn(), l.deps)
		if b := s.GetBranch(); b != nil {
			b.ThenSteps = keepOrder(b.GetThenSteps(), l.then)
			b.ElseSteps = keepOrder(b.GetElseSteps(), l.els)
		}
		if p := s.GetParallel(); p != nil {
			p.Steps = keepOrder(p.GetSteps(), l.members)
		}
	}
	bp.Layout = layout
	return bp, nil
}

func appendNew(list []string, id string) []string {
	if slices.Contains(list, id) {
		return list
	}
	return append(list, id)
}

// keepOrder returns want ordered as in old, with the ids old lacks after, in want's order.
func keepOrder(old, want []string) []string {
	var out []string
	for _, id := range old {
		if slices.Contains(want, id) && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	for _, id := range want {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
