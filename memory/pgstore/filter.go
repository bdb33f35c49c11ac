package pgstore

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

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
//   - all of none is true, any of none is false, as for memory.MatchFilter.
func compileFilter(sb *strings.Builder, a *args, f *memory.Filter) error {
	switch f.Op {
	case memory.FilterField:
		return compileCondition(sb, a, f.Cond)
	case memory.FilterAll, memory.FilterAny:
		op, empty := " AND ", "true"
		if f.Op == memory.FilterAny {
			op, empty = " OR ", "false"
		}
		if len(f.Filters) == 0 {
			sb.WriteString(empty)
			return nil
		}
		sb.WriteByte('(')
		for i, sub := range f.Filters {
			if i > 0 {
				sb.WriteString(op)
			}
			if err := compileFilter(sb, a, sub); err != nil {
				return err
			}
		}
		sb.WriteByte(')')
		return nil
	case memory.FilterNot:
		sb.WriteString("(NOT ")
		if err := compileFilter(sb, a, f.Not); err != nil {
			return err
		}
		sb.WriteByte(')')
		return nil
	}
	return memory.Invalidf("filter", "unset filter")
}

func compileCondition(sb *strings.Builder, a *args, c memory.Condition) error {
	switch c.Op {
	case memory.CondEq:
		return compileEq(sb, a, c.Key, c.Value)
	case memory.CondNe:
		sb.WriteString("(NOT ")
		if err := compileEq(sb, a, c.Key, c.Value); err != nil {
			return err
		}
		sb.WriteByte(')')
		return nil
	case memory.CondIn:
		sb.WriteByte('(')
		for i, s := range c.Values {
			if i > 0 {
				sb.WriteString(" OR ")
			}
			if err := compileEq(sb, a, c.Key, s); err != nil {
				return err
			}
		}
		sb.WriteByte(')')
		return nil
	case memory.CondRange:
		k := a.add(c.Key)
		fmt.Fprintf(sb, "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE jsonb_typeof(metadata->%[1]s::text) "+
			"WHEN 'array' THEN metadata->%[1]s::text ELSE jsonb_build_array(metadata->%[1]s::text) END) AS e(v) "+
			"WHERE CASE WHEN jsonb_typeof(e.v) = 'number' THEN true", k)
		r := c.Range
		for _, b := range []struct {
			v  *float64
			op string
		}{{r.Gt, ">"}, {r.Gte, ">="}, {r.Lt, "<"}, {r.Lte, "<="}} {
			if b.v != nil {
				// SQL orders NaN above every number, where memory.MatchFilter finds every comparison false; the
				// contract refuses non-finite bounds, and so does this store for callers in Go.
				if math.IsNaN(*b.v) || math.IsInf(*b.v, 0) {
					return memory.Invalidf("filter.field.range", "bounds must be finite")
				}
				fmt.Fprintf(sb, " AND (e.v)::float8 %s %s::float8", b.op, a.add(*b.v))
			}
		}
		sb.WriteString(" ELSE false END)")
		return nil
	case memory.CondExists:
		if !c.Exists {
			sb.WriteString("NOT ")
		}
		fmt.Fprintf(sb, "(metadata ? %s::text)", a.add(c.Key))
		return nil
	}
	return memory.Invalidf("filter.field", "unset operator")
}

func compileEq(sb *strings.Builder, a *args, key string, s memory.Scalar) error {
	v, err := scalarJSON(s)
	if err != nil {
		return err
	}
	scalar, err := json.Marshal(map[string]any{key: v})
	if err != nil {
		return memory.Invalidf("filter.field", "%v", err) // a number JSON cannot hold (NaN, infinities)
	}
	inList, _ := json.Marshal(map[string]any{key: []any{v}})
	fmt.Fprintf(sb, "(metadata @> %s::jsonb OR metadata @> %s::jsonb)", a.add(string(scalar)), a.add(string(inList)))
	return nil
}

func scalarJSON(s memory.Scalar) (any, error) {
	switch s.Kind {
	case memory.KindString:
		return s.Str, nil
	case memory.KindNumber:
		return s.Num, nil
	case memory.KindBool:
		return s.Bool, nil
	}
	return nil, memory.Invalidf("filter", "unset scalar")
}

// metadataJSON encodes metadata as a JSON object: strings, numbers, booleans and arrays of them.
func metadataJSON(md map[string]memory.Value) ([]byte, error) {
	m := make(map[string]any, len(md))
	for k, v := range md {
		if v.Kind != memory.KindList {
			sv, err := scalarJSON(v.Scalar)
			if err != nil {
				return nil, memory.Invalidf("metadata["+strconv.Quote(k)+"]", "unset value")
			}
			m[k] = sv
			continue
		}
		l := make([]any, 0, len(v.List))
		for _, s := range v.List {
			sv, err := scalarJSON(s)
			if err != nil {
				return nil, err
			}
			l = append(l, sv)
		}
		m[k] = l
	}
	return json.Marshal(m)
}

// metadataFromJSON decodes what metadataJSON encoded. An empty object gives nil.
func metadataFromJSON(b []byte) (map[string]memory.Value, error) {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode metadata: %w", err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]memory.Value, len(m))
	for k, v := range m {
		if x, ok := v.([]any); ok {
			l := make([]memory.Scalar, 0, len(x))
			for _, e := range x {
				s, err := toScalar(e)
				if err != nil {
					return nil, fmt.Errorf("decode metadata %q: list element: %w", k, err)
				}
				l = append(l, s)
			}
			out[k] = memory.ListValue(l...)
			continue
		}
		s, err := toScalar(v)
		if err != nil {
			return nil, fmt.Errorf("decode metadata %q: %w", k, err)
		}
		out[k] = memory.Value{Scalar: s}
	}
	return out, nil
}

func toScalar(v any) (memory.Scalar, error) {
	switch x := v.(type) {
	case string:
		return memory.String(x), nil
	case float64:
		return memory.Number(x), nil
	case bool:
		return memory.Bool(x), nil
	}
	return memory.Scalar{}, fmt.Errorf("unexpected %T", v)
}
