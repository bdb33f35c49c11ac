package engine

import (
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/types/known/structpb"
)

// checkSchema checks v against the subset of JSON Schema the orchestrator enforces: "type" (object, array,
// string, number, integer, boolean, null, or a list of them), "required", "properties" (recursively), "items"
// and "enum". Other keywords are accepted and not enforced. A nil schema accepts anything.
func checkSchema(schema *structpb.Struct, v *structpb.Value, path string) error {
	if schema == nil {
		return nil
	}
	f := schema.GetFields()
	if t := f["type"]; t != nil {
		var types []string
		if s, ok := t.GetKind().(*structpb.Value_StringValue); ok {
			types = []string{s.StringValue}
		}
		for _, e := range t.GetListValue().GetValues() {
			types = append(types, e.GetStringValue())
		}
		if len(types) > 0 && !slices.ContainsFunc(types, func(t string) bool { return hasType(v, t) }) {
			return fmt.Errorf("%s: want type %v, got %s", path, types, typeName(v))
		}
	}
	if enum := f["enum"].GetListValue(); enum != nil {
		if !slices.ContainsFunc(enum.GetValues(), func(e *structpb.Value) bool { return equal(e, v) }) {
			return fmt.Errorf("%s: not one of the allowed values", path)
		}
	}
	if obj := v.GetStructValue(); obj != nil {
		for _, r := range f["required"].GetListValue().GetValues() {
			if _, ok := obj.GetFields()[r.GetStringValue()]; !ok {
				return fmt.Errorf("%s: missing required property %q", path, r.GetStringValue())
			}
		}
		props := f["properties"].GetStructValue().GetFields()
		keys := make([]string, 0, len(props))
		for k := range props {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if pv, ok := obj.GetFields()[k]; ok {
				if err := checkSchema(props[k].GetStructValue(), pv, path+"."+k); err != nil {
					return err
				}
			}
		}
	}
	if list := v.GetListValue(); list != nil && f["items"].GetStructValue() != nil {
		for i, e := range list.GetValues() {
			if err := checkSchema(f["items"].GetStructValue(), e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func hasType(v *structpb.Value, t string) bool {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StructValue:
		return t == "object"
	case *structpb.Value_ListValue:
		return t == "array"
	case *structpb.Value_StringValue:
		return t == "string"
	case *structpb.Value_BoolValue:
		return t == "boolean"
	case *structpb.Value_NullValue:
		return t == "null"
	case *structpb.Value_NumberValue:
		return t == "number" || t == "integer" && k.NumberValue == math.Trunc(k.NumberValue)
	}
	return false
}

func typeName(v *structpb.Value) string {
	for _, t := range []string{"object", "array", "string", "boolean", "null", "integer", "number"} {
		if hasType(v, t) {
			return t
		}
	}
	return "nothing"
}

func equal(a, b *structpb.Value) bool {
	return a.String() == b.String()
}
