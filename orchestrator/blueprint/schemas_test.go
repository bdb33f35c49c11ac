package blueprint_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// TestInvalidSchemasRefused: an input_schema or payload_schema that is not a valid JSON Schema is reported when
// the blueprint is validated (and so refused when it is saved), at the path of the bad keyword (one per schema)
// and the position of the schema's nearest located ancestor.
func TestInvalidSchemasRefused(t *testing.T) {
	t.Parallel()
	src := `name: schemas
input_schema:
  type: object
  properties:
    topic: {type: strin}
steps:
  - id: ask
    approval:
      prompt: "OK?"
      payload_schema: {properties: {n: {minimum: 1, maxLength: -1}}, required: [1]}
  - id: fetch
    depends_on: [ask]
    approval: {prompt: "Again?", payload_schema: {$ref: "https://example.com/s.json"}}
  - id: fine
    depends_on: [fetch]
    approval: {prompt: "Last?", payload_schema: {type: object, required: [ok], properties: {ok: {type: boolean}}}}
`
	_, errs := blueprint.Load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: src}})
	want := []string{
		"3:3 input_schema.properties.topic.type: not a valid JSON Schema: not one of [array boolean integer null number object string]",
		"10:23 steps[0].approval.payload_schema.properties.n.maxLength: not a valid JSON Schema: less than 0",
		`13:50 steps[1].approval.payload_schema.$ref: not a valid JSON Schema: "https://example.com/s.json" is another document: only references inside the schema are resolved`,
	}
	if diff := cmp.Diff(want, format(errs)); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
}
