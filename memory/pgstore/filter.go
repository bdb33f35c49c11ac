package pgstore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/memory"
)

// args collects positional query parameters. Values are always passed as parameters, never spliced into SQL.
type args []any

func (a *args) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// compileFilter appends to sb a boolean SQL expression over the jsonb column "metadata" equivalent to
// memory.MatchFilter(f, metadata). f must have passed memory.ValidateFilter.
//
//   - eq: metadata @> {"k": v} (scalar equal, same JSON type) or metadata @> {"k": [v]} (list contains); both
//     use the GIN jsonb_path_ops index.
//   - ne: NOT eq (metadata is never NULL, so a missing key matches).
//   - in: OR of eq.
//   - range: some element of the value (the value itself when not an array) is a JSON number within bounds.
//   - exists: metadata ? key.
func compileFilter(sb *strings.Builder, a *args, f *memoryv1.Filter) error {
	switch k := f.GetKind().(type) {
	case *memoryv1.Filter_Field:
		return compileCondition(sb, a, k.Field)
	case *memoryv1.Filter_All, *memoryv1.Filter_Any:
		list, op := f.GetAll(), " AND "
		if list == nil {
			list, op = f.GetAny(), " OR "
		}
		sb.WriteByte('(')
		for i, sub := range list.GetFilters() {
			if i > 0 {
				sb.WriteString(op)
			}
			if err := compileFilter(sb, a, sub); err != nil {
				return err
			}
		}
		sb.WriteByte(')')
		return nil
	case *memoryv1.Filter_Not:
		sb.WriteString("(NOT ")
		if err := compileFilter(sb, a, k.Not); err != nil {
			return err
		}
		sb.WriteByte(')')
		return nil
	}
	return memory.Invalidf("filter", "unset filter")
}

func compileCondition(sb *strings.Builder, a *args, c *memoryv1.FieldCondition) error {
	key := c.GetKey()
	switch op := c.GetOp().(type) {
	case *memoryv1.FieldCondition_Eq:
		return compileEq(sb, a, key, op.Eq)
	case *memoryv1.FieldCondition_Ne:
		sb.WriteString("(NOT ")
		if err := compileEq(sb, a, key, op.Ne); err != nil {
			return err
		}
		sb.WriteByte(')')
		return nil
	case *memoryv1.FieldCondition_In:
		sb.WriteByte('(')
		for i, s := range op.In.GetValues() {
			if i > 0 {
				sb.WriteString(" OR ")
			}
			if err := compileEq(sb, a, key, s); err != nil {
				return err
			}
		}
		sb.WriteByte(')')
		return nil
	case *memoryv1.FieldCondition_Range:
		k := a.add(key)
		fmt.Fprintf(sb, "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE jsonb_typeof(metadata->%[1]s::text) "+
			"WHEN 'array' THEN metadata->%[1]s::text ELSE jsonb_build_array(metadata->%[1]s::text) END) AS e(v) "+
			"WHERE CASE WHEN jsonb_typeof(e.v) = 'number' THEN true", k)
		r := op.Range
		for _, b := range []struct {
			v  *float64
			op string
		}{{r.Gt, ">"}, {r.Gte, ">="}, {r.Lt, "<"}, {r.Lte, "<="}} {
			if b.v != nil {
				fmt.Fprintf(sb, " AND (e.v)::float8 %s %s::float8", b.op, a.add(*b.v))
			}
		}
		sb.WriteString(" ELSE false END)")
		return nil
	case *memoryv1.FieldCondition_Exists:
		if !op.Exists {
			sb.WriteString("NOT ")
		}
		fmt.Fprintf(sb, "(metadata ? %s::text)", a.add(key))
		return nil
	}
	return memory.Invalidf("filter.field", "unset operator")
}

func compileEq(sb *strings.Builder, a *args, key string, s *memoryv1.Scalar) error {
	v, err := scalarJSON(s)
	if err != nil {
		return err
	}
	scalar, _ := json.Marshal(map[string]any{key: v})
	inList, _ := json.Marshal(map[string]any{key: []any{v}})
	fmt.Fprintf(sb, "(metadata @> %s::jsonb OR metadata @> %s::jsonb)", a.add(string(scalar)), a.add(string(inList)))
	return nil
}

func scalarJSON(s *memoryv1.Scalar) (any, error) {
	switch k := s.GetKind().(type) {
	case *memoryv1.Scalar_StringValue:
		return k.StringValue, nil
	case *memoryv1.Scalar_NumberValue:
		return k.NumberValue, nil
	case *memoryv1.Scalar_BoolValue:
		return k.BoolValue, nil
	}
	return nil, memory.Invalidf("filter", "unset scalar")
}

// metadataJSON encodes metadata as a JSON object: strings, numbers, booleans and arrays of them.
func metadataJSON(md map[string]*memoryv1.Value) ([]byte, error) {
	m := make(map[string]any, len(md))
	for k, v := range md {
		switch x := v.GetKind().(type) {
		case *memoryv1.Value_StringValue:
			m[k] = x.StringValue
		case *memoryv1.Value_NumberValue:
			m[k] = x.NumberValue
		case *memoryv1.Value_BoolValue:
			m[k] = x.BoolValue
		case *memoryv1.Value_ListValue:
			l := make([]any, 0, len(x.ListValue.GetValues()))
			for _, s := range x.ListValue.GetValues() {
				sv, err := scalarJSON(s)
				if err != nil {
					return nil, err
				}
				l = append(l, sv)
			}
			m[k] = l
		default:
			return nil, memory.Invalidf("metadata["+strconv.Quote(k)+"]", "unset value")
		}
	}
	return json.Marshal(m)
}

// metadataFromJSON decodes what metadataJSON encoded. An empty object gives nil.
func metadataFromJSON(b []byte) (map[string]*memoryv1.Value, error) {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode metadata: %w", err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]*memoryv1.Value, len(m))
	for k, v := range m {
		switch x := v.(type) {
		case []any:
			l := &memoryv1.ScalarList{Values: make([]*memoryv1.Scalar, 0, len(x))}
			for _, e := range x {
				s, err := toScalar(e)
				if err != nil {
					return nil, err
				}
				l.Values = append(l.Values, s)
			}
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_ListValue{ListValue: l}}
		case string:
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_StringValue{StringValue: x}}
		case float64:
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_NumberValue{NumberValue: x}}
		case bool:
			out[k] = &memoryv1.Value{Kind: &memoryv1.Value_BoolValue{BoolValue: x}}
		default:
			return nil, fmt.Errorf("decode metadata %q: unexpected %T", k, v)
		}
	}
	return out, nil
}

func toScalar(v any) (*memoryv1.Scalar, error) {
	switch x := v.(type) {
	case string:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: x}}, nil
	case float64:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_NumberValue{NumberValue: x}}, nil
	case bool:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_BoolValue{BoolValue: x}}, nil
	}
	return nil, fmt.Errorf("decode metadata: unexpected list element %T", v)
}
