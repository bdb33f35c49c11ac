package jsonschema_test

import (
	"testing"

	"github.com/loom-dev/loom/internal/jsonschema"
)

var toolSchema = map[string]any{"type": "object", "additionalProperties": false, "required": []any{"query"}, "properties": map[string]any{
	"query": map[string]any{"type": "string", "minLength": 1, "maxLength": 4096, "description": "What to look for."},
	"top_k": map[string]any{"type": "integer", "minimum": 1, "maximum": 50}}}

// BenchmarkCompile measures compiling a built-in tool's schema (metaschema check included).
func BenchmarkCompile(b *testing.B) {
	for b.Loop() {
		if _, err := jsonschema.Compile(toolSchema, jsonschema.Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidate measures validating tool arguments with a compiled schema.
func BenchmarkValidate(b *testing.B) {
	s, err := jsonschema.Compile(toolSchema, jsonschema.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	v := map[string]any{"query": "cats", "top_k": 3.0}
	for b.Loop() {
		if err := s.Validate(v, "arguments"); err != nil {
			b.Fatal(err)
		}
	}
}
