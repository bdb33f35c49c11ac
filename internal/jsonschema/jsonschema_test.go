package jsonschema_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loom-dev/loom/internal/jsonschema"
)

func decode(t testing.TB, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return v
}

// nested returns depth objects nested in one another, {"a":{"a":...{}}}.
func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1)
}

func TestValidate(t *testing.T) {
	t.Parallel()
	search := `{"type":"object","additionalProperties":false,"required":["query"],"properties":{
		"query":{"type":"string","minLength":1,"maxLength":8},
		"top_k":{"type":"integer","minimum":1,"maximum":50},
		"mode":{"enum":["a","b"]},
		"items":{"type":"array","maxItems":2,"items":{"type":"boolean"}},
		"tags":{"type":"array","uniqueItems":true},
		"id":{"type":["string","null"],"pattern":"^[a-z]+$"}}}`
	tests := []struct {
		schema, value, err string
		keyword, property  string
	}{
		{schema: search, value: `{"query":"cats"}`},
		{schema: search, value: `{"query":"cats","top_k":3,"mode":"b","items":[true],"id":null}`},
		{schema: search, value: `{}`, err: "arguments.query: required", keyword: "required", property: "query"},
		{schema: search, value: `{"query":""}`, err: "arguments.query: shorter than 1 characters", keyword: "minLength"},
		{schema: search, value: `{"query":"ééééééééé"}`, err: "arguments.query: longer than 8 characters", keyword: "maxLength"},
		{schema: search, value: `{"query":7}`, err: "arguments.query: want string, got number", keyword: "type"},
		{schema: search, value: `{"query":"x","top_k":2.5}`, err: "arguments.top_k: want integer, got number"},
		{schema: search, value: `{"query":"x","top_k":0}`, err: "arguments.top_k: less than 1", keyword: "minimum"},
		{schema: search, value: `{"query":"x","top_k":51}`, err: "arguments.top_k: greater than 50", keyword: "maximum"},
		{schema: search, value: `{"query":"x","other":1}`, err: `arguments: unknown property "other"`, keyword: "additionalProperties", property: "other"},
		{schema: search, value: `[1]`, err: "arguments: want object, got array"},
		{schema: search, value: `{"query":"x","mode":"c"}`, err: "arguments.mode: not one of [a b]", keyword: "enum"},
		{schema: search, value: `{"query":"x","mode":{"x":1}}`, err: "arguments.mode: not one of [a b]"},
		{schema: search, value: `{"query":"x","items":[true,false,true]}`, err: "arguments.items: more than 2 items"},
		{schema: search, value: `{"query":"x","items":[true,"no"]}`, err: "arguments.items[1]: want boolean, got string"},
		{schema: search, value: `{"query":"x","tags":[1,2,1]}`, err: "arguments.tags: items 0 and 2 are equal"},
		{schema: search, value: `{"query":"x","id":"A"}`, err: `arguments.id: does not match "^[a-z]+$"`},
		{schema: search, value: `{"query":"x","id":3}`, err: "arguments.id: want null or string, got number"},
		// The first error by path, then type before the rest.
		{schema: search, value: `{"query":7,"zzz":1}`, err: `arguments: unknown property "zzz"`},
		{schema: `{"anyOf":[{"type":"string"},{"type":"integer"}]}`, value: `true`, err: "arguments: matches none of the schemas of anyOf"},
		{schema: `{"oneOf":[{"type":"number"},{"type":"integer"}]}`, value: `1`, err: "arguments: matches 2 schemas of oneOf, want exactly one"},
		{schema: `{"not":{"type":"string"}}`, value: `"s"`, err: "arguments: matches the schema of not"},
		{schema: `false`, value: `1`, err: "arguments: not allowed"},
		{schema: `{"const":3}`, value: `4`, err: "arguments: not 3"},
		{schema: `{"$defs":{"pos":{"type":"integer","exclusiveMinimum":0}},"properties":{"n":{"$ref":"#/$defs/pos"}}}`, value: `{"n":0}`,
			err: "arguments.n: not greater than 0"},
		// Formats annotate in draft 2020-12; they do not assert.
		{schema: `{"format":"email"}`, value: `"not an email"`},
		// The contract's nesting limit: 64 levels pass, 65 do not.
		{schema: `{}`, value: nested(64)},
		{schema: `{}`, value: nested(65), err: "arguments" + strings.Repeat(".a", 64) + ": nested too deeply: more than 64 levels"},
	}
	for _, tc := range tests {
		s, err := jsonschema.Compile(decode(t, tc.schema), jsonschema.Limits{})
		if err != nil {
			t.Fatalf("Compile(%s) = %v", tc.schema, err)
		}
		err = s.Validate(decode(t, tc.value), "arguments")
		if (tc.err == "") != (err == nil) || (err != nil && err.Error() != tc.err) {
			t.Errorf("Validate(%.60s) = %v, want %q", tc.value, err, tc.err)
			continue
		}
		if err == nil {
			continue
		}
		var ve *jsonschema.ValidationError
		if !errors.As(err, &ve) || !errors.Is(err, jsonschema.ErrInvalid) {
			t.Errorf("Validate(%s) error %T does not match ErrInvalid", tc.value, err)
			continue
		}
		if tc.keyword != "" && (ve.Keyword != tc.keyword || ve.Property != tc.property) {
			t.Errorf("Validate(%s): keyword %q, property %q; want %q, %q", tc.value, ve.Keyword, ve.Property, tc.keyword, tc.property)
		}
	}
}

// TestRefusedSchemas lists schemas refused when compiled, each with the path to its bad keyword.
func TestRefusedSchemas(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	local := filepath.Join(dir, "other.json")
	if err := os.WriteFile(local, []byte(`{"type":"string"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, schema, path, reason string
	}{
		{name: "unknown type", schema: `{"type":"strin"}`, path: "type", reason: "not one of"},
		{name: "type not a string", schema: `{"properties":{"a":{"type":5}}}`, path: "properties.a.type", reason: "not one of"},
		{name: "type list entry", schema: `{"allOf":[{},{"type":["string",3]}]}`, path: "allOf[1].type[1]", reason: "not one of"},
		{name: "negative minLength", schema: `{"properties":{"a":{"minLength":-1}}}`, path: "properties.a.minLength", reason: "less than 0"},
		{name: "fractional maxItems", schema: `{"items":{"maxItems":1.5}}`, path: "items.maxItems", reason: "want integer"},
		{name: "required not a list", schema: `{"required":"x"}`, path: "required", reason: "want array, got string"},
		{name: "required entry", schema: `{"required":["a",1]}`, path: "required[1]", reason: "want string, got number"},
		{name: "additionalProperties", schema: `{"additionalProperties":"no"}`, path: "additionalProperties", reason: "want boolean or object"},
		{name: "properties not an object", schema: `{"properties":[]}`, path: "properties", reason: "want object, got array"},
		{name: "bad regex", schema: `{"properties":{"p":{"pattern":"[a-"}}}`, path: "properties.p.pattern", reason: "regex"},
		{name: "bad patternProperties regex", schema: `{"patternProperties":{"(":{}}}`, path: "patternProperties", reason: `property name "("`},
		{name: "not a schema", schema: `5`, path: "", reason: "want boolean or object, got number"},
		{name: "dangling ref", schema: `{"properties":{"a":{"$ref":"#/$defs/missing"}}}`, path: "properties.a.$ref", reason: "does not resolve"},
		{name: "ref cycle", schema: `{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}`, path: "$ref", reason: "reference cycle"},
		{name: "http ref", schema: `{"properties":{"a":{"$ref":"http://127.0.0.1:1/x.json"}}}`, path: "properties.a.$ref", reason: "another document"},
		{name: "https ref", schema: `{"$ref":"https://json-schema.example/x.json#/a"}`, path: "$ref", reason: "another document"},
		{name: "file ref", schema: fmt.Sprintf(`{"$ref":%q}`, "file://"+local), path: "$ref", reason: "another document"},
		{name: "absolute path ref", schema: fmt.Sprintf(`{"$ref":%q}`, local), path: "$ref", reason: "another document"},
		{name: "relative ref", schema: `{"items":[{"$ref":"other.json"}]}`, path: "items", reason: "want"},
		{name: "relative ref in defs", schema: `{"$defs":{"x":{"$ref":"other.json"}},"$ref":"#/$defs/x"}`, path: "$defs.x.$ref", reason: "another document"},
		{name: "dynamic ref", schema: `{"$dynamicRef":"https://example.com/s#meta"}`, path: "$dynamicRef", reason: "another document"},
		{name: "unknown metaschema", schema: `{"$schema":"https://example.com/meta"}`, path: "$schema", reason: "another document"},
		{name: "too deep", schema: nested(65), path: strings.Repeat("a.", 63) + "a", reason: "nested too deeply"},
		{name: "too big", schema: `{"description":"` + strings.Repeat("x", jsonschema.DefaultMaxSchemaBytes) + `"}`, path: "description", reason: "schema larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := jsonschema.Compile(decode(t, tc.schema), jsonschema.Limits{})
			var se *jsonschema.SchemaError
			if !errors.As(err, &se) || !errors.Is(err, jsonschema.ErrInvalidSchema) {
				t.Fatalf("Compile = %v, want a *SchemaError", err)
			}
			if se.Path != tc.path || !strings.Contains(se.Reason, tc.reason) {
				t.Errorf("Compile = path %q, reason %q; want path %q, a reason with %q", se.Path, se.Reason, tc.path, tc.reason)
			}
			if strings.Contains(se.Error(), "loom.invalid") {
				t.Errorf("error quotes the internal base URL: %v", se)
			}
		})
	}
}

func TestAcceptedSchemas(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		`true`, `{}`, `{"type":"object"}`, nested(64),
		`{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object"}`,
		`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","definitions":{"a":{"type":"string"}},"properties":{"a":{"$ref":"#/definitions/a"}}}`,
		`{"$defs":{"node":{"type":"object","properties":{"next":{"$ref":"#/$defs/node"}}}},"$ref":"#/$defs/node"}`,
		`{"$id":"https://example.com/s.json","$defs":{"x":{"$id":"x.json","type":"string"}},"properties":{"a":{"$ref":"x.json"}}}`,
		`{"x-unknown-keyword":{"anything":[1,2]},"a":{"a":"leaf"}}`,
	} {
		if err := jsonschema.Check(decode(t, s), jsonschema.Limits{}); err != nil {
			t.Errorf("Check(%.80s) = %v", s, err)
		}
	}
	// A recursive schema validates a recursive value, and the instance limit still holds.
	s, err := jsonschema.Compile(decode(t, `{"$defs":{"node":{"type":"object","properties":{"a":{"$ref":"#/$defs/node"}}}},"$ref":"#/$defs/node"}`), jsonschema.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(decode(t, nested(64)), "v"); err != nil {
		t.Errorf("64 levels: %v", err)
	}
	if err := s.Validate(decode(t, nested(65)), "v"); err == nil || !strings.Contains(err.Error(), "nested too deeply") {
		t.Errorf("65 levels: %v", err)
	}
}

func TestInstanceLimitsAndValues(t *testing.T) {
	t.Parallel()
	s, err := jsonschema.Compile(map[string]any{}, jsonschema.Limits{MaxInstanceBytes: 100, MaxDepth: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		v    any
		want string
	}{
		{v: map[string]any{"a": strings.Repeat("x", 200)}, want: "v.a: value larger than 100 bytes"},
		{v: []any{[]any{[]any{[]any{}}}}, want: "v[0][0][0]: nested too deeply: more than 3 levels"},
		{v: map[string]any{"n": math.NaN()}, want: "v.n: not a finite number"},
		{v: map[string]any{"n": math.Inf(1)}, want: "v.n: not a finite number"},
		{v: map[string]any{"s": []string{"x"}}, want: "v.s: not a JSON value ([]string)"},
		{v: map[string]any{"ok": []any{1.0, "x", true, nil, json.Number("2")}}},
	} {
		err := s.Validate(tc.v, "v")
		if (tc.want == "") != (err == nil) || (err != nil && err.Error() != tc.want) {
			t.Errorf("Validate(%v) = %v, want %q", tc.v, err, tc.want)
		}
	}
	if err := jsonschema.Check(map[string]any{"minimum": math.NaN()}, jsonschema.Limits{}); err == nil || err.Error() != "minimum: not a finite number" {
		t.Errorf("Check(NaN minimum) = %v", err)
	}
}

// FuzzValidator compiles a fuzzed schema within small limits and validates a fuzzed value with it: neither may
// panic or run away (the work limit holds), every error is one of the two types, and what is refused for a
// limit is over it.
func FuzzValidator(f *testing.F) {
	for _, seed := range [][2]string{
		{`{"type":"object","required":["a"],"properties":{"a":{"type":"string","minLength":1}}}`, `{"a":"x"}`},
		{`{"items":{"$ref":"#"},"maxItems":3}`, `[[[[]]]]`},
		{`{"anyOf":[{"type":"string"},{"$ref":"#/$defs/n"}],"$defs":{"n":{"type":"number","multipleOf":0.5}}}`, `1.5`},
		{`{"patternProperties":{"^a":{"const":1}},"additionalProperties":false}`, `{"ab":2,"c":1}`},
		{`{"uniqueItems":true,"contains":{"type":"null"},"minContains":2}`, `[null,null]`},
		{`{"$ref":"http://x/y"}`, `1`},
		{`{"oneOf":[true,{"not":false}]}`, `{}`},
		{`{"dependentRequired":{"a":["b"]},"propertyNames":{"maxLength":2}}`, `{"a":1,"abc":2}`},
		{`{"$schema":"http://json-schema.org/draft-04/schema#","maximum":3,"exclusiveMaximum":true}`, `3`},
		{`{"prefixItems":[{"type":"integer"}],"items":false,"unevaluatedProperties":false}`, `[1,2]`},
		{`{"anyOf":[{"items":{"$ref":"#"}},{"items":{"$ref":"#"}}]}`, `[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]`},
	} {
		f.Add(seed[0], seed[1])
	}
	limits := jsonschema.Limits{MaxDepth: 16, MaxSchemaBytes: 4096, MaxInstanceBytes: 4096, MaxWork: 20_000}
	f.Fuzz(func(t *testing.T, schema, value string) {
		var doc, v any
		if json.Unmarshal([]byte(schema), &doc) != nil || json.Unmarshal([]byte(value), &v) != nil {
			return
		}
		s, err := jsonschema.Compile(doc, limits)
		if err != nil {
			var se *jsonschema.SchemaError
			if !errors.As(err, &se) || se.Reason == "" {
				t.Fatalf("Compile error %T %v is not a *SchemaError with a reason", err, err)
			}
			return
		}
		err = s.Validate(v, "v")
		if err == nil {
			return
		}
		var ve *jsonschema.ValidationError
		if !errors.As(err, &ve) || ve.Reason == "" || !strings.HasPrefix(ve.Path, "v") {
			t.Fatalf("Validate error %T %v is not a *ValidationError with a path and a reason", err, err)
		}
		if ve.Keyword == "" && len(value) < 1000 && !strings.Contains(ve.Reason, "nested too deeply") && !strings.Contains(ve.Reason, "larger than") &&
			!strings.Contains(ve.Reason, "too costly") {
			t.Fatalf("limit error %v for a value within the limits", err)
		}
	})
}

func TestCache(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCache(jsonschema.Limits{}, 2)
	a, err := c.Compile(map[string]any{"type": "string"})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := c.Compile(map[string]any{"type": "string"}); b != a {
		t.Error("the same schema compiled twice")
	}
	if _, err := c.Compile(map[string]any{"type": "strin"}); err == nil || err.Error() != "type: not one of [array boolean integer null number object string]" {
		t.Errorf("bad schema: %v", err)
	}
	for i := range 5 { // past max: starts over, still right
		if _, err := c.Compile(map[string]any{"maxLength": float64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if s, err := c.Compile(map[string]any{"type": "string"}); err != nil || s.Validate(1.0, "v") == nil {
		t.Errorf("after eviction: %v, %v", s, err)
	}
}

// TestWorkLimit: a schema whose references fan out takes time exponential in the value's depth; the value is
// refused, quickly, before the library starts, while the same schema still checks shallow values.
func TestWorkLimit(t *testing.T) {
	t.Parallel()
	s, err := jsonschema.Compile(decode(t, `{"anyOf":[{"items":{"$ref":"#"}},{"items":{"$ref":"#"}}],"not":{"const":0}}`), jsonschema.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(decode(t, "[[[1]]]"), "v"); err != nil {
		t.Errorf("shallow value: %v", err)
	}
	start := time.Now()
	deep := decode(t, strings.Repeat("[", 40)+"0"+strings.Repeat("]", 40)) // 2^40 applications
	if err := s.Validate(deep, "v"); err == nil || !strings.Contains(err.Error(), "too costly to check") {
		t.Errorf("deep value: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusing took %v", d)
	}
	// References fanning out in place cost as much for any value: the schema itself is refused.
	var defs []string
	for i := range 30 {
		defs = append(defs, fmt.Sprintf(`"d%d":{"anyOf":[{"$ref":"#/$defs/d%d"},{"$ref":"#/$defs/d%d"}]}`, i, i+1, i+1))
	}
	defs = append(defs, `"d30":{"type":"string"}`)
	start = time.Now()
	err = jsonschema.Check(decode(t, `{"$defs":{`+strings.Join(defs, ",")+`},"$ref":"#/$defs/d0"}`), jsonschema.Limits{})
	if err == nil || !strings.Contains(err.Error(), "too costly") {
		t.Errorf("fan-out schema: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusing took %v", d)
	}
	// The count follows what applies: a wide value under a plain schema is cheap.
	wide := make([]any, 100_000)
	for i := range wide {
		wide[i] = map[string]any{"a": float64(i), "b": "x"}
	}
	plain, err := jsonschema.Compile(decode(t, `{"type":"array","items":{"type":"object","properties":{"a":{"type":"number"},"b":{"type":"string"},"c":{},"d":{},"e":{}}}}`), jsonschema.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Validate(wide, "v"); err != nil {
		t.Errorf("wide value: %v", err)
	}
}
