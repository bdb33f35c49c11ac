package engine

import (
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/internal/jsonschema"
)

// checkSchema checks v against schema, a JSON Schema (draft 2020-12 unless it names another draft), with the one
// validator of the code base (internal/jsonschema), which the agent's tool arguments obey too. A nil schema
// accepts anything. path names v in the error ("input", "payload"). A schema that does not compile (one stored
// before schemas were checked when blueprints are saved) refuses every value, saying so.
func checkSchema(schema *structpb.Struct, v *structpb.Value, path string) error {
	if schema == nil {
		return nil
	}
	s, err := jsonschema.Compile(schema.AsMap(), jsonschema.Limits{})
	if err != nil {
		return fmt.Errorf("the %s schema is not a valid JSON Schema: %w", path, err)
	}
	return s.Validate(v.AsInterface(), path)
}
