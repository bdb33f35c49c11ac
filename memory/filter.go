package memory

import (
	"fmt"
	"math"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

// MaxFilterDepth is the deepest nesting of all/any/not a filter may have; a lone field condition has depth 1.
const MaxFilterDepth = 8

// ValidateFilter checks f beyond the contract's field rules: nesting depth at most MaxFilterDepth, every oneof
// set, finite numbers, non-empty lists, an "in" list of a single type, a range with at least one bound. field
// names f in the request ("filter"); the returned error is a *FieldError naming the exact sub-field, for example
// "filter.all.filters[1].field.range: ...". A nil filter is valid.
func ValidateFilter(field string, f *memoryv1.Filter) error {
	if f == nil {
		return nil
	}
	return validateFilter(field, f, 1)
}

func validateFilter(field string, f *memoryv1.Filter, depth int) error {
	if f == nil {
		return Invalidf(field, "filter must be set")
	}
	if depth > MaxFilterDepth {
		return Invalidf(field, "filter nesting deeper than %d", MaxFilterDepth)
	}
	switch k := f.GetKind().(type) {
	case *memoryv1.Filter_Field:
		return validateCondition(field+".field", k.Field)
	case *memoryv1.Filter_All:
		return validateList(field+".all", k.All, depth)
	case *memoryv1.Filter_Any:
		return validateList(field+".any", k.Any, depth)
	case *memoryv1.Filter_Not:
		return validateFilter(field+".not", k.Not, depth+1)
	default:
		return Invalidf(field, "one of field, all, any, not must be set")
	}
}

func validateList(field string, l *memoryv1.FilterList, depth int) error {
	fs := l.GetFilters()
	if len(fs) == 0 {
		return Invalidf(field+".filters", "at least one filter is required")
	}
	if len(fs) > 64 {
		return Invalidf(field+".filters", "at most 64 filters, got %d", len(fs))
	}
	for i, sub := range fs {
		if err := validateFilter(fmt.Sprintf("%s.filters[%d]", field, i), sub, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func validateCondition(field string, c *memoryv1.FieldCondition) error {
	if c == nil {
		return Invalidf(field, "condition must be set")
	}
	if c.GetKey() == "" {
		return Invalidf(field+".key", "must not be empty")
	}
	switch op := c.GetOp().(type) {
	case *memoryv1.FieldCondition_Eq:
		return checkScalar(field+".eq", op.Eq)
	case *memoryv1.FieldCondition_Ne:
		return checkScalar(field+".ne", op.Ne)
	case *memoryv1.FieldCondition_In:
		vs := op.In.GetValues()
		if len(vs) == 0 {
			return Invalidf(field+".in.values", "at least one value is required")
		}
		var first string
		for i, v := range vs {
			f := fmt.Sprintf("%s.in.values[%d]", field, i)
			if err := checkScalar(f, v); err != nil {
				return err
			}
			if i == 0 {
				first = scalarType(v)
			} else if t := scalarType(v); t != first {
				return Invalidf(f, "type mismatch: %s in a list of %s", t, first)
			}
		}
		return nil
	case *memoryv1.FieldCondition_Range:
		r := op.Range
		if r == nil || (r.Gt == nil && r.Gte == nil && r.Lt == nil && r.Lte == nil) {
			return Invalidf(field+".range", "at least one of gt, gte, lt, lte is required")
		}
		names := [...]string{"gt", "gte", "lt", "lte"}
		for i, b := range [...]*float64{r.Gt, r.Gte, r.Lt, r.Lte} {
			if b != nil && !finite(*b) {
				return Invalidf(field+".range."+names[i], "must be finite")
			}
		}
		return nil
	case *memoryv1.FieldCondition_Exists:
		return nil
	default:
		return Invalidf(field, "one of eq, ne, in, range, exists must be set")
	}
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func scalarType(s *memoryv1.Scalar) string {
	switch s.GetKind().(type) {
	case *memoryv1.Scalar_StringValue:
		return "string"
	case *memoryv1.Scalar_NumberValue:
		return "number"
	case *memoryv1.Scalar_BoolValue:
		return "bool"
	}
	return "unset"
}

func checkScalar(field string, s *memoryv1.Scalar) error {
	switch k := s.GetKind().(type) {
	case *memoryv1.Scalar_StringValue, *memoryv1.Scalar_BoolValue:
		return nil
	case *memoryv1.Scalar_NumberValue:
		if !finite(k.NumberValue) {
			return Invalidf(field+".number_value", "must be finite")
		}
		return nil
	}
	return Invalidf(field, "a string, number or bool value is required")
}

func checkValue(field string, v *memoryv1.Value) error {
	switch k := v.GetKind().(type) {
	case *memoryv1.Value_StringValue, *memoryv1.Value_BoolValue:
		return nil
	case *memoryv1.Value_NumberValue:
		if !finite(k.NumberValue) {
			return Invalidf(field+".number_value", "must be finite")
		}
		return nil
	case *memoryv1.Value_ListValue:
		for i, s := range k.ListValue.GetValues() {
			if err := checkScalar(fmt.Sprintf("%s.list_value.values[%d]", field, i), s); err != nil {
				return err
			}
		}
		return nil
	}
	return Invalidf(field, "a string, number, bool or list value is required")
}

// MatchFilter reports whether metadata md satisfies f (nil matches everything). It is the reference semantics
// every store implements:
//   - eq: the stored scalar equals the operand, of the same type; a stored list matches when it contains it.
//   - ne: exactly "not eq", so a missing key or a value of another type matches.
//   - in: eq for any operand.
//   - range: numeric only; a stored number within every bound, or a stored list with such an element.
//     Other types are false.
//   - exists: the key is present (true) or absent (false).
//
// f must have passed ValidateFilter; an unset oneof evaluates to false.
func MatchFilter(f *memoryv1.Filter, md map[string]*memoryv1.Value) bool {
	if f == nil {
		return true
	}
	switch k := f.GetKind().(type) {
	case *memoryv1.Filter_Field:
		return matchCondition(k.Field, md)
	case *memoryv1.Filter_All:
		for _, sub := range k.All.GetFilters() {
			if !MatchFilter(sub, md) {
				return false
			}
		}
		return true
	case *memoryv1.Filter_Any:
		for _, sub := range k.Any.GetFilters() {
			if MatchFilter(sub, md) {
				return true
			}
		}
		return false
	case *memoryv1.Filter_Not:
		if k.Not == nil {
			return false
		}
		return !MatchFilter(k.Not, md)
	}
	return false
}

func matchCondition(c *memoryv1.FieldCondition, md map[string]*memoryv1.Value) bool {
	v, ok := md[c.GetKey()]
	switch op := c.GetOp().(type) {
	case *memoryv1.FieldCondition_Exists:
		return ok == op.Exists
	case *memoryv1.FieldCondition_Eq:
		return ok && valueEq(v, op.Eq)
	case *memoryv1.FieldCondition_Ne:
		return !ok || !valueEq(v, op.Ne)
	case *memoryv1.FieldCondition_In:
		if !ok {
			return false
		}
		for _, s := range op.In.GetValues() {
			if valueEq(v, s) {
				return true
			}
		}
		return false
	case *memoryv1.FieldCondition_Range:
		if !ok {
			return false
		}
		switch k := v.GetKind().(type) {
		case *memoryv1.Value_NumberValue:
			return inRange(k.NumberValue, op.Range)
		case *memoryv1.Value_ListValue:
			for _, s := range k.ListValue.GetValues() {
				if n, isNum := s.GetKind().(*memoryv1.Scalar_NumberValue); isNum && inRange(n.NumberValue, op.Range) {
					return true
				}
			}
		}
		return false
	}
	return false
}

func inRange(x float64, r *memoryv1.Range) bool {
	if r == nil {
		return false
	}
	if r.Gt != nil && !(x > *r.Gt) {
		return false
	}
	if r.Gte != nil && !(x >= *r.Gte) {
		return false
	}
	if r.Lt != nil && !(x < *r.Lt) {
		return false
	}
	if r.Lte != nil && !(x <= *r.Lte) {
		return false
	}
	return true
}

func valueEq(v *memoryv1.Value, s *memoryv1.Scalar) bool {
	switch k := v.GetKind().(type) {
	case *memoryv1.Value_StringValue:
		sv, ok := s.GetKind().(*memoryv1.Scalar_StringValue)
		return ok && sv.StringValue == k.StringValue
	case *memoryv1.Value_NumberValue:
		n, ok := s.GetKind().(*memoryv1.Scalar_NumberValue)
		return ok && n.NumberValue == k.NumberValue
	case *memoryv1.Value_BoolValue:
		b, ok := s.GetKind().(*memoryv1.Scalar_BoolValue)
		return ok && b.BoolValue == k.BoolValue
	case *memoryv1.Value_ListValue:
		for _, e := range k.ListValue.GetValues() {
			if scalarEq(e, s) {
				return true
			}
		}
	}
	return false
}

func scalarEq(a, b *memoryv1.Scalar) bool {
	switch ka := a.GetKind().(type) {
	case *memoryv1.Scalar_StringValue:
		kb, ok := b.GetKind().(*memoryv1.Scalar_StringValue)
		return ok && ka.StringValue == kb.StringValue
	case *memoryv1.Scalar_NumberValue:
		kb, ok := b.GetKind().(*memoryv1.Scalar_NumberValue)
		return ok && ka.NumberValue == kb.NumberValue
	case *memoryv1.Scalar_BoolValue:
		kb, ok := b.GetKind().(*memoryv1.Scalar_BoolValue)
		return ok && ka.BoolValue == kb.BoolValue
	}
	return false
}
