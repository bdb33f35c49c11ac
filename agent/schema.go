package agent

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/loom-dev/loom/internal/jsonschema"
)

// ValidateArgs checks v, a value decoded from JSON (map[string]any, []any, string, float64, bool, nil), against
// schema, a JSON Schema object, with the one validator of the code base (internal/jsonschema: draft 2020-12 by
// default, no external references, depth and size limited). The error names the offending argument path, as in
// "arguments.query: required" or `arguments: unknown argument "x"`; a schema that is not valid (a tool server's,
// or one stored before schemas were checked on save) refuses every call, saying so.
func ValidateArgs(schema map[string]any, v any) error {
	s, err := jsonschema.Compile(schema, jsonschema.Limits{})
	return ValidateCompiled(s, err, v)
}

// ValidateCompiled is ValidateArgs for a schema compiled already, or that failed to compile with err.
func ValidateCompiled(s *jsonschema.Schema, err error, v any) error {
	if err != nil {
		return fmt.Errorf("the tool's parameters are not a valid JSON Schema: %w", err)
	}
	err = s.Validate(v, "arguments")
	var ve *jsonschema.ValidationError
	if errors.As(err, &ve) && ve.Keyword == "additionalProperties" {
		return fmt.Errorf("%s: unknown argument %q", ve.Path, TruncatePath(ve.Property))
	}
	return err
}

// CheckParameters refuses, when an agent is saved, a webhook tool's parameters that are not a valid JSON Schema,
// naming the bad keyword's path under field.
func CheckParameters(params *structpb.Struct, field string) error {
	if params == nil {
		return nil
	}
	err := jsonschema.Check(params.AsMap(), jsonschema.Limits{})
	var se *jsonschema.SchemaError
	if errors.As(err, &se) {
		if se.Path != "" {
			field += "." + se.Path
		}
		return &FieldError{Field: field, Reason: "not a valid JSON Schema: " + se.Reason}
	}
	return err
}
