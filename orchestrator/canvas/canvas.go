// Package canvas lays out a blueprint as a canvas for visual editors.
//
// The layout is layered, left to right, and deterministic: the same blueprint always gives the same canvas.
//   - Layers: a step's layer is the length of the longest dependency path that reaches it (depends_on, branch
//     targets and parallel members all count as dependencies; depending on a parallel step means depending on
//     its members too, so the step is drawn after the block's group box).
//   - Order within a layer: layer 0 by step id; every later layer by the barycenter (mean position) of each
//     step's predecessors, ties broken by step id.
//   - Geometry: fixed node sizes on a grid (see the constants); edges are orthogonal polylines from the right
//     middle of the source to the left middle of the target, bending in the gap before the target's column.
//   - Branch edges are labelled "then" or "else"; parallel and map steps get a group box around their block.
//   - Steps with a position in the blueprint's layout (saved by an editor, see [Blueprint]) are drawn there; the
//     edges and group boxes follow them.
//
// The canvas embeds the blueprint, so an editor can rebuild it.
package canvas

import (
	"cmp"
	"slices"

	"google.golang.org/protobuf/proto"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// Grid geometry of a canvas, in canvas units.
const (
	NodeWidth    = 200.0 // width of every node
	NodeHeight   = 80.0  // height of every node
	LayerGap     = 80.0  // horizontal gap between layers
	RowGap       = 40.0  // vertical gap between nodes of a layer
	Margin       = 40.0  // space around the whole drawing
	GroupPadding = 16.0  // space between a group's box and its nodes
)

type edge struct {
	from, to int
	label    string
}

// Generate lays out bp. It never fails: references to unknown steps are ignored and, should the blueprint have a
// cycle, the edges that close it are ignored for layering. Generate does not modify bp.
func Generate(bp *orchestratorv1.Blueprint) *orchestratorv1.Canvas {
	steps := bp.GetSteps()
	index := make(map[string]int, len(steps))
	for i, s := range steps {
		if _, dup := index[s.GetId()]; !dup {
			index[s.GetId()] = i
		}
	}
	edges := collectEdges(steps, index)
	preds := make([][]int, len(steps))
	for _, e := range edges {
		preds[e.to] = append(preds[e.to], e.from)
	}
	layer := layers(steps, index, blockPreds(steps, index, preds))

	// Group by layer, then order each layer.
	maxLayer := 0
	for i := range steps {
		if isNode(steps, index, i) {
			maxLayer = max(maxLayer, layer[i])
		}
	}
	rows := make([][]int, maxLayer+1)
	for i := range steps {
		if isNode(steps, index, i) {
			rows[layer[i]] = append(rows[layer[i]], i)
		}
	}
	pos := make([]float64, len(steps))
	for l, row := range rows {
		bary := make(map[int]float64, len(row))
		for _, i := range row {
			sum, n := 0.0, 0
			for _, p := range preds[i] {
				if layer[p] < l {
					sum += pos[p]
					n++
				}
			}
			if n > 0 {
				bary[i] = sum / float64(n)
			}
		}
		slices.SortFunc(row, func(a, b int) int {
			if l > 0 {
				if c := cmp.Compare(bary[a], bary[b]); c != 0 {
					return c
				}
			}
			return cmp.Compare(steps[a].GetId(), steps[b].GetId())
		})
		for k, i := range row {
			pos[i] = float64(k)
		}
	}

	c := &orchestratorv1.Canvas{Blueprint: proto.Clone(bp).(*orchestratorv1.Blueprint)}
	if c.Blueprint == nil {
		c.Blueprint = &orchestratorv1.Blueprint{}
	}
	nodes := make(map[int]*orchestratorv1.Node, len(steps))
	maxRows := 0
	for l, row := range rows {
		maxRows = max(maxRows, len(row))
		for k, i := range row {
			n := &orchestratorv1.Node{
				Id:     steps[i].GetId(),
				Kind:   Kind(steps[i]),
				Label:  label(steps[i]),
				X:      Margin + float64(l)*(NodeWidth+LayerGap),
				Y:      Margin + float64(k)*(NodeHeight+RowGap),
				Width:  NodeWidth,
				Height: NodeHeight,
				Layer:  int32(l),
			}
			nodes[i] = n
			c.Nodes = append(c.Nodes, n)
		}
	}
	if len(steps) > 0 {
		c.Width = 2*Margin + float64(len(rows))*(NodeWidth+LayerGap) - LayerGap
		c.Height = 2*Margin + float64(maxRows)*(NodeHeight+RowGap) - RowGap
	}
	// Positions an editor saved win over the layout; the canvas grows to hold them.
	for _, n := range c.Nodes {
		if p, ok := bp.GetLayout()[n.GetId()]; ok {
			n.X, n.Y = p.GetX(), p.GetY()
			c.Width = max(c.Width, n.X+n.Width+Margin)
			c.Height = max(c.Height, n.Y+n.Height+Margin)
		}
	}
	for _, e := range edges {
		from, to := nodes[e.from], nodes[e.to]
		c.Edges = append(c.Edges, &orchestratorv1.Edge{
			Id:     from.GetId() + "->" + to.GetId(),
			From:   from.GetId(),
			To:     to.GetId(),
			Label:  e.label,
			Points: route(from, to),
		})
	}
	slices.SortFunc(c.Edges, func(a, b *orchestratorv1.Edge) int { return cmp.Compare(a.GetId(), b.GetId()) })
	for i, s := range steps {
		if !isNode(steps, index, i) {
			continue
		}
		var members []int
		switch k := s.GetKind().(type) {
		case *orchestratorv1.Step_Parallel:
			members = append(members, i)
			for _, id := range k.Parallel.GetSteps() {
				if j, ok := index[id]; ok && !slices.Contains(members, j) {
					members = append(members, j)
				}
			}
		case *orchestratorv1.Step_Map:
			members = append(members, i)
		default:
			continue
		}
		c.Groups = append(c.Groups, group(s.GetId(), members, nodes))
	}
	return c
}

// blockPreds returns preds extended for layering: a step that depends on a parallel step waits for its members
// too (recursively), so it is laid out after the whole block and outside its group box.
func blockPreds(steps []*orchestratorv1.Step, index map[string]int, preds [][]int) [][]int {
	var members func(i int, seen map[int]bool, out []int) []int
	members = func(i int, seen map[int]bool, out []int) []int {
		for _, id := range steps[i].GetParallel().GetSteps() {
			if j, ok := index[id]; ok && !seen[j] {
				seen[j] = true
				out = members(j, seen, append(out, j))
			}
		}
		return out
	}
	out := make([][]int, len(steps))
	for i, s := range steps {
		out[i] = slices.Clone(preds[i])
		if !isNode(steps, index, i) {
			continue
		}
		for _, id := range s.GetDependsOn() {
			if j, ok := index[id]; ok && steps[j].GetParallel() != nil {
				for _, m := range members(j, map[int]bool{j: true}, nil) {
					if m != i && !slices.Contains(out[i], m) {
						out[i] = append(out[i], m)
					}
				}
			}
		}
	}
	return out
}

// isNode reports whether step i is drawn: the first step with each id.
func isNode(steps []*orchestratorv1.Step, index map[string]int, i int) bool {
	return index[steps[i].GetId()] == i
}

func collectEdges(steps []*orchestratorv1.Step, index map[string]int) []edge {
	var out []edge
	seen := make(map[[2]int]int)
	add := func(from, to int, label string) {
		if from == to {
			return
		}
		k := [2]int{from, to}
		if j, ok := seen[k]; ok {
			if out[j].label == "" {
				out[j].label = label
			}
			return
		}
		seen[k] = len(out)
		out = append(out, edge{from: from, to: to, label: label})
	}
	for i, s := range steps {
		if !isNode(steps, index, i) {
			continue
		}
		for _, id := range s.GetDependsOn() {
			if j, ok := index[id]; ok {
				add(j, i, "")
			}
		}
		if b := s.GetBranch(); b != nil {
			for _, id := range b.GetThenSteps() {
				if j, ok := index[id]; ok {
					add(i, j, "then")
				}
			}
			for _, id := range b.GetElseSteps() {
				if j, ok := index[id]; ok {
					add(i, j, "else")
				}
			}
		}
		if p := s.GetParallel(); p != nil {
			for _, id := range p.GetSteps() {
				if j, ok := index[id]; ok {
					add(i, j, "")
				}
			}
		}
	}
	return out
}

// layers computes longest-path layers, ignoring edges that close a cycle.
func layers(steps []*orchestratorv1.Step, index map[string]int, preds [][]int) []int {
	layer := make([]int, len(steps))
	state := make([]uint8, len(steps)) // 0 new, 1 in progress, 2 done
	var visit func(int) int
	visit = func(i int) int {
		switch state[i] {
		case 1:
			return -1 // closes a cycle: ignored
		case 2:
			return layer[i]
		}
		state[i] = 1
		l := 0
		for _, p := range preds[i] {
			if pl := visit(p); pl >= 0 {
				l = max(l, pl+1)
			}
		}
		layer[i], state[i] = l, 2
		return l
	}
	for i := range steps {
		if isNode(steps, index, i) {
			visit(i)
		}
	}
	return layer
}

func route(from, to *orchestratorv1.Node) []*orchestratorv1.Point {
	sx, sy := from.GetX()+from.GetWidth(), from.GetY()+from.GetHeight()/2
	ex, ey := to.GetX(), to.GetY()+to.GetHeight()/2
	if sy == ey {
		return []*orchestratorv1.Point{{X: sx, Y: sy}, {X: ex, Y: ey}}
	}
	mx := ex - LayerGap/2
	return []*orchestratorv1.Point{{X: sx, Y: sy}, {X: mx, Y: sy}, {X: mx, Y: ey}, {X: ex, Y: ey}}
}

func group(id string, members []int, nodes map[int]*orchestratorv1.Node) *orchestratorv1.Group {
	g := &orchestratorv1.Group{Id: id}
	minX, minY, maxX, maxY := 0.0, 0.0, 0.0, 0.0
	for k, m := range members {
		n := nodes[m]
		g.NodeIds = append(g.NodeIds, n.GetId())
		if k == 0 {
			minX, minY, maxX, maxY = n.GetX(), n.GetY(), n.GetX()+n.GetWidth(), n.GetY()+n.GetHeight()
			continue
		}
		minX, minY = min(minX, n.GetX()), min(minY, n.GetY())
		maxX, maxY = max(maxX, n.GetX()+n.GetWidth()), max(maxY, n.GetY()+n.GetHeight())
	}
	g.X, g.Y = minX-GroupPadding, minY-GroupPadding
	g.Width, g.Height = maxX-minX+2*GroupPadding, maxY-minY+2*GroupPadding
	return g
}

// Kind names a step's kind as in the blueprint schema ("agent", "memory_search", ...), or "" if unset.
func Kind(s *orchestratorv1.Step) string {
	switch s.GetKind().(type) {
	case *orchestratorv1.Step_Agent:
		return "agent"
	case *orchestratorv1.Step_MemorySearch:
		return "memory_search"
	case *orchestratorv1.Step_MemoryUpsert:
		return "memory_upsert"
	case *orchestratorv1.Step_Branch:
		return "branch"
	case *orchestratorv1.Step_Parallel:
		return "parallel"
	case *orchestratorv1.Step_Map:
		return "map"
	case *orchestratorv1.Step_Approval:
		return "approval"
	case *orchestratorv1.Step_Delay:
		return "delay"
	}
	return ""
}

func label(s *orchestratorv1.Step) string {
	switch k := s.GetKind().(type) {
	case *orchestratorv1.Step_Agent:
		return s.GetId() + " · " + k.Agent.GetAgent()
	case *orchestratorv1.Step_Map:
		return s.GetId() + " · map " + k.Map.GetAgent()
	case *orchestratorv1.Step_MemorySearch:
		return s.GetId() + " · search " + k.MemorySearch.GetNamespace()
	case *orchestratorv1.Step_MemoryUpsert:
		return s.GetId() + " · remember " + k.MemoryUpsert.GetNamespace()
	}
	return s.GetId()
}
