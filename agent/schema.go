package agent

import (
	"fmt"
	"math"
	"sort"
	"unicode/utf8"
)

// ValidateArgs checks v, a value decoded from JSON (map[string]any, []any, string, float64, bool, nil), against
// schema, a JSON Schema object. It supports the keywords the built-in tools use: type, properties, required,
// additionalProperties (boolean), enum, minLength, maxLength (in characters), minimum, maximum, items,
// minItems, maxItems. Unknown keywords are ignored. The error names the offending argument path.
func ValidateArgs(schema map[string]any, v any) error {
	return validateValue(schema, v, "arguments", 0)
}

const maxSchemaDepth = 32

func validateValue(schema map[string]any, v any, path string, depth int) error {
	if depth > maxSchemaDepth {
		return fmt.Errorf("%s: nested too deeply", path)
	}
	if t, ok := schema["type"].(string); ok {
		if !hasType(v, t) {
			return fmt.Errorf("%s: want %s, got %s", path, t, typeName(v))
		}
	}
	if enum, ok := schema["enum"].([]any); ok && !enumContains(enum, v) {
		return fmt.Errorf("%s: not one of %v", path, enum)
	}
	switch x := v.(type) {
	case string:
		n := utf8.RuneCountInString(x)
		if lim, ok := num(schema["minLength"]); ok && float64(n) < lim {
			return fmt.Errorf("%s: shorter than %v characters", path, lim)
		}
		if lim, ok := num(schema["maxLength"]); ok && float64(n) > lim {
			return fmt.Errorf("%s: longer than %v characters", path, lim)
		}
	case float64:
		if lim, ok := num(schema["minimum"]); ok && x < lim {
			return fmt.Errorf("%s: less than %v", path, lim)
		}
		if lim, ok := num(schema["maximum"]); ok && x > lim {
			return fmt.Errorf("%s: greater than %v", path, lim)
		}
	case []any:
		if lim, ok := num(schema["minItems"]); ok && float64(len(x)) < lim {
			return fmt.Errorf("%s: fewer than %v items", path, lim)
		}
		if lim, ok := num(schema["maxItems"]); ok && float64(len(x)) > lim {
			return fmt.Errorf("%s: more than %v items", path, lim)
		}
		if items, ok := schema["items"].(map[string]any); ok {
			for i, e := range x {
				if err := validateValue(items, e, fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		if req, ok := schema["required"].([]any); ok {
			for _, r := range req {
				name, _ := r.(string)
				if _, present := x[name]; !present {
					return fmt.Errorf("%s.%s: required", path, name)
				}
			}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // report the same error for the same input
		for _, k := range keys {
			sub, known := props[k].(map[string]any)
			if !known {
				if ap, ok := schema["additionalProperties"].(bool); ok && !ap {
					return fmt.Errorf("%s: unknown argument %q", path, truncatePath(k))
				}
				continue
			}
			if err := validateValue(sub, x[k], path+"."+k, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

func hasType(v any, t string) bool {
	switch t {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "null":
		return v == nil
	case "number":
		f, ok := v.(float64)
		return ok && !math.IsNaN(f) && !math.IsInf(f, 0)
	case "integer":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f) && !math.IsInf(f, 0)
	}
	return true
}

func typeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "boolean"
	case nil:
		return "null"
	case float64:
		return "number"
	}
	return fmt.Sprintf("%T", v)
}

func num(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int:
		return float64(x), true
	}
	return 0, false
}

// enumContains compares scalars only: == on maps or slices held in interfaces would panic.
func enumContains(enum []any, v any) bool {
	switch v.(type) {
	case map[string]any, []any:
		return false
	}
	for _, e := range enum {
		switch e.(type) {
		case map[string]any, []any:
			continue
		}
		if e == v {
			return true
		}
	}
	return false
}
