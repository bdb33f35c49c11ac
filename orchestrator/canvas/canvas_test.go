package canvas_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
	"github.com/loom-dev/loom/orchestrator/canvas"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func parse(t *testing.T, src []byte) *orchestratorv1.Blueprint {
	t.Helper()
	doc, errs := blueprint.Parse(src)
	if doc == nil || len(errs) > 0 {
		t.Fatalf("Parse() errors: %v", errs)
	}
	if errs := doc.Validate(); len(errs) > 0 {
		t.Fatalf("Validate() errors: %v", errs)
	}
	return doc.Blueprint
}

// stableJSON renders a canvas as indented JSON. protojson output is deliberately unstable in whitespace, so it is
// compacted and re-indented.
func stableJSON(t *testing.T, c *orchestratorv1.Canvas) []byte {
	t.Helper()
	raw, err := protojson.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

func TestGolden(t *testing.T) {
	t.Parallel()
	inputs, err := filepath.Glob("testdata/canvas/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			got := stableJSON(t, canvas.Generate(parse(t, src)))
			golden := filepath.Join("testdata", "canvas", name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("canvas (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLayout(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("testdata/canvas/diamond.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := canvas.Generate(parse(t, src))
	layers := map[string]int32{}
	y := map[string]float64{}
	for _, n := range c.GetNodes() {
		layers[n.GetId()] = n.GetLayer()
		y[n.GetId()] = n.GetY()
		if n.GetX() != canvas.Margin+float64(n.GetLayer())*(canvas.NodeWidth+canvas.LayerGap) {
			t.Errorf("node %s x = %v, not on the grid of layer %d", n.GetId(), n.GetX(), n.GetLayer())
		}
	}
	wantLayers := map[string]int32{"alone": 0, "start": 0, "left": 1, "right": 1, "join": 2}
	if diff := cmp.Diff(wantLayers, layers); diff != "" {
		t.Errorf("layers (-want +got):\n%s", diff)
	}
	if !(y["alone"] < y["start"]) || !(y["left"] < y["right"]) {
		t.Errorf("rows not ordered by id within layers: %v", y)
	}
	for _, e := range c.GetEdges() {
		pts := e.GetPoints()
		if len(pts) < 2 {
			t.Fatalf("edge %s has %d points", e.GetId(), len(pts))
		}
		for k := 1; k < len(pts); k++ {
			if pts[k].GetX() != pts[k-1].GetX() && pts[k].GetY() != pts[k-1].GetY() {
				t.Errorf("edge %s segment %d is not orthogonal", e.GetId(), k)
			}
		}
	}
}

func TestDeterministicUnderStepOrder(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("testdata/canvas/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bp := parse(t, src)
	a := canvas.Generate(bp)
	rev := parse(t, src)
	for i, j := 0, len(rev.Steps)-1; i < j; i, j = i+1, j-1 {
		rev.Steps[i], rev.Steps[j] = rev.Steps[j], rev.Steps[i]
	}
	b := canvas.Generate(rev)
	opts := []cmp.Option{protocmp.Transform(), protocmp.IgnoreFields(&orchestratorv1.Canvas{}, "blueprint"),
		protocmp.SortRepeated(func(x, y *orchestratorv1.Group) bool { return x.GetId() < y.GetId() })}
	if diff := cmp.Diff(a, b, opts...); diff != "" {
		t.Errorf("layout depends on step order (-forward +reversed):\n%s", diff)
	}
	if !cmp.Equal(bp, a.GetBlueprint(), protocmp.Transform()) {
		t.Error("canvas does not embed the blueprint")
	}
}

func TestInvalidBlueprintsDoNotPanic(t *testing.T) {
	t.Parallel()
	bp := &orchestratorv1.Blueprint{Steps: []*orchestratorv1.Step{
		{Id: "a", DependsOn: []string{"b", "ghost", "a"}},
		{Id: "b", DependsOn: []string{"a"}},
		{Id: "b"},
		{Id: "p", Kind: &orchestratorv1.Step_Parallel{Parallel: &orchestratorv1.ParallelStep{Steps: []string{"a", "nope"}}}},
	}}
	c := canvas.Generate(bp)
	if len(c.GetNodes()) != 3 {
		t.Errorf("nodes = %d, want 3 (duplicate ids drawn once)", len(c.GetNodes()))
	}
	if got := canvas.Generate(nil); len(got.GetNodes()) != 0 || got.GetWidth() != 0 {
		t.Errorf("Generate(nil) = %v, want an empty canvas", got)
	}
}
