package blueprint

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// stepKinds are the fields of Step's oneof "kind", read from the contract's descriptor: a kind added to the
// contract is tested here without anyone listing it.
func stepKinds(t *testing.T) []protoreflect.FieldDescriptor {
	t.Helper()
	fields := (&orchestratorv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind").Fields()
	out := make([]protoreflect.FieldDescriptor, fields.Len())
	for i := range out {
		out[i] = fields.Get(i)
	}
	if len(out) < 8 {
		t.Fatalf("the oneof kind has %d fields", len(out))
	}
	return out
}

// TestEveryStepKind checks that the decoder and the validator handle every step kind of the contract: YAML with
// the kind's key decodes to that kind, the validator has a case for it, and the message for a step without a
// kind names it.
func TestEveryStepKind(t *testing.T) {
	t.Parallel()
	for _, f := range stepKinds(t) {
		name := string(f.Name())
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			doc, _ := Parse([]byte("name: kinds\nsteps:\n  - id: a\n    " + name + ": {}\n"))
			steps := doc.Blueprint.GetSteps()
			if len(steps) != 1 || steps[0].ProtoReflect().WhichOneof(f.ContainingOneof()) != f {
				t.Errorf("decode: YAML key %q gave steps %v, want one step of kind %s", name, steps, name)
			}

			s := &orchestratorv1.Step{Id: "a"}
			m := s.ProtoReflect()
			m.Set(f, m.NewField(f))
			for _, e := range Validate(&orchestratorv1.Blueprint{Name: "kinds", Steps: []*orchestratorv1.Step{s}}) {
				if strings.Contains(e.GetMessage(), "is not validated") {
					t.Errorf("validate: %s: %s", e.GetPath(), e.GetMessage())
				}
			}
			if !strings.Contains(kindNames(), name) {
				t.Errorf("the message for a step without a kind lists %q, not %s", kindNames(), name)
			}
		})
	}
}
