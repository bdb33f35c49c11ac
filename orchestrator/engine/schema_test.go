package engine

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

// TestCheckSchema: run inputs and approval payloads obey the same JSON Schema rules as agent tool arguments:
// every keyword of draft 2020-12, a depth limit, paths in errors.
func TestCheckSchema(t *testing.T) {
	t.Parallel()
	schema := func(m map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	value := func(v any) *structpb.Value {
		pv, err := structpb.NewValue(v)
		if err != nil {
			t.Fatal(err)
		}
		return pv
	}
	topic := schema(map[string]any{"type": "object", "required": []any{"topic"}, "properties": map[string]any{
		"topic": map[string]any{"type": "string", "minLength": 2},
		"tags":  map[string]any{"type": "array", "items": map[string]any{"enum": []any{"a", "b"}}},
		"n":     map[string]any{"type": []any{"integer", "null"}},
	}})
	deep := any("leaf")
	for range 64 {
		deep = map[string]any{"a": deep}
	}
	for _, tc := range []struct {
		schema *structpb.Struct
		v      any
		want   string
	}{
		{schema: nil, v: map[string]any{"anything": 1.0}},
		{schema: topic, v: map[string]any{"topic": "go", "tags": []any{"a"}, "n": 3.0}},
		{schema: topic, v: map[string]any{"topic": "go", "n": nil}},
		{schema: topic, v: map[string]any{}, want: "input.topic: required"},
		{schema: topic, v: map[string]any{"topic": 7.0}, want: "input.topic: want string, got number"},
		{schema: topic, v: map[string]any{"topic": "g"}, want: "input.topic: shorter than 2 characters"}, // not enforced before
		{schema: topic, v: map[string]any{"topic": "go", "tags": []any{"a", "c"}}, want: "input.tags[1]: not one of [a b]"},
		{schema: topic, v: map[string]any{"topic": "go", "n": 1.5}, want: "input.n: want null or integer, got number"},
		{schema: schema(map[string]any{}), v: map[string]any{"d": deep}, want: "nested too deeply"},
		{schema: schema(map[string]any{"type": "strin"}), v: "x", want: "the input schema is not a valid JSON Schema: type: not one of"},
		{schema: schema(map[string]any{"$ref": "http://127.0.0.1:1/s.json"}), v: "x", want: "$ref: \"http://127.0.0.1:1/s.json\" is another document"},
	} {
		err := checkSchema(tc.schema, value(tc.v), "input")
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkSchema(%v) = %v, want %q", tc.v, err, tc.want)
		}
	}
}
