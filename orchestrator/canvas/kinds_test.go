package canvas

import (
	"testing"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// TestEveryStepKind checks that the canvas names every step kind of the contract (read from the descriptor of
// Step's oneof "kind") as the blueprint schema does, so a kind added to the contract cannot be drawn unnamed.
func TestEveryStepKind(t *testing.T) {
	t.Parallel()
	fields := (&orchestratorv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	if fields.Len() < 8 {
		t.Fatalf("the oneof kind has %d fields", fields.Len())
	}
	for i := range fields.Len() {
		f := fields.Get(i)
		s := &orchestratorv1.Step{Id: "a"}
		m := s.ProtoReflect()
		m.Set(f, m.NewField(f))
		if got := Kind(s); got != string(f.Name()) {
			t.Errorf("Kind(step of kind %s) = %q", f.Name(), got)
		}
		if cv := Generate(&orchestratorv1.Blueprint{Name: "kinds", Steps: []*orchestratorv1.Step{s}}); len(cv.GetNodes()) == 0 {
			t.Errorf("Generate(step of kind %s) drew no node", f.Name())
		}
	}
}
