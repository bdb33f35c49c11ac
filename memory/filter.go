package memory

import "fmt"

// MaxFilterDepth is the deepest nesting of all/any/not a filter may have; a lone field condition has depth 1.
const MaxFilterDepth = 8

// FilterOp is what a Filter node does.
type FilterOp uint8

// The filter operators. The zero FilterOp is no operator, which ValidateFilter refuses.
const (
	FilterNone FilterOp = iota
	// FilterField tests one metadata key: Filter.Cond.
	FilterField
	// FilterAll is true when every one of Filter.Filters is (true for none).
	FilterAll
	// FilterAny is true when one of Filter.Filters is (false for none).
	FilterAny
	// FilterNot is true when Filter.Not is false.
	FilterNot
)

// Filter is a typed predicate over record metadata, the domain form of the contract's Filter: a condition on
// one key, or all/any of a list of filters, or the negation of one. Only the fields of its Op are meaningful.
// A nil *Filter matches every record.
type Filter struct {
	Op FilterOp
	// Cond is the condition of a FilterField.
	Cond Condition
	// Filters are the operands of FilterAll and FilterAny.
	Filters []*Filter
	// Not is the operand of FilterNot.
	Not *Filter
}

// CondOp is the operator of a Condition.
type CondOp uint8

// The condition operators. The zero CondOp is no operator, which ValidateFilter refuses.
const (
	CondNone CondOp = iota
	// CondEq: the stored scalar equals Condition.Value (same type); a stored list matches when it contains it.
	CondEq
	// CondNe: exactly "not CondEq", so a missing key or a value of another type matches.
	CondNe
	// CondIn: CondEq for any of Condition.Values.
	CondIn
	// CondRange: a stored number within every bound of Condition.Range, or a stored list with such an element.
	CondRange
	// CondExists: the key is present (Condition.Exists true) or absent (false).
	CondExists
)

// Condition tests one metadata key. Only the operand of its Op is meaningful.
type Condition struct {
	Key string
	Op  CondOp
	// Value is the operand of CondEq and CondNe.
	Value Scalar
	// Values are the operands of CondIn.
	Values []Scalar
	// Range is the operand of CondRange.
	Range Range
	// Exists is the operand of CondExists.
	Exists bool
}

// Range bounds a number; nil bounds are open.
type Range struct {
	Gt, Gte, Lt, Lte *float64
}

// Eq returns the filter key == s.
func Eq(key string, s Scalar) *Filter {
	return &Filter{Op: FilterField, Cond: Condition{Key: key, Op: CondEq, Value: s}}
}

// Ne returns the filter key != s.
func Ne(key string, s Scalar) *Filter {
	return &Filter{Op: FilterField, Cond: Condition{Key: key, Op: CondNe, Value: s}}
}

// In returns the filter key in ss.
func In(key string, ss ...Scalar) *Filter {
	return &Filter{Op: FilterField, Cond: Condition{Key: key, Op: CondIn, Values: ss}}
}

// InRange returns the filter key within r.
func InRange(key string, r Range) *Filter {
	return &Filter{Op: FilterField, Cond: Condition{Key: key, Op: CondRange, Range: r}}
}

// Exists returns the filter "key is present" (exists true) or "key is absent" (false).
func Exists(key string, exists bool) *Filter {
	return &Filter{Op: FilterField, Cond: Condition{Key: key, Op: CondExists, Exists: exists}}
}

// All returns the conjunction of fs.
func All(fs ...*Filter) *Filter { return &Filter{Op: FilterAll, Filters: fs} }

// Any returns the disjunction of fs.
func Any(fs ...*Filter) *Filter { return &Filter{Op: FilterAny, Filters: fs} }

// Not returns the negation of f.
func Not(f *Filter) *Filter { return &Filter{Op: FilterNot, Not: f} }

// ValidateFilter checks what the contract's rules (protovalidate, in proto/loom/memory/v1/memory.proto) cannot
// express: nesting at most MaxFilterDepth deep, an "in" list that is non-empty and of a single type, and a range
// with at least one bound; and that every node is set, which only a filter built in Go can miss. Key patterns,
// list sizes and finite numbers are the contract's. Every store calls it once per filtered call. field names f
// in the request ("filter"); the error is a *FieldError naming the exact sub-field in the contract's terms, for
// example "filter.all.filters[1].field.in.values[1]: ...". A nil filter is valid.
func ValidateFilter(field string, f *Filter) error {
	if f == nil {
		return nil
	}
	return validateFilter(field, f, 1)
}

func validateFilter(field string, f *Filter, depth int) error {
	if f == nil {
		return Invalidf(field, "filter must be set")
	}
	if depth > MaxFilterDepth {
		return Invalidf(field, "filter nesting deeper than %d", MaxFilterDepth)
	}
	switch f.Op {
	case FilterField:
		return validateCondition(field+".field", f.Cond)
	case FilterAll:
		return validateList(field+".all.filters", f.Filters, depth)
	case FilterAny:
		return validateList(field+".any.filters", f.Filters, depth)
	case FilterNot:
		return validateFilter(field+".not", f.Not, depth+1)
	}
	return Invalidf(field, "one of field, all, any, not must be set")
}

func validateList(field string, fs []*Filter, depth int) error {
	for i, sub := range fs {
		if err := validateFilter(fmt.Sprintf("%s[%d]", field, i), sub, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func validateCondition(field string, c Condition) error {
	switch c.Op {
	case CondExists:
		return nil
	case CondEq:
		return checkScalarKind(field+".eq", c.Value)
	case CondNe:
		return checkScalarKind(field+".ne", c.Value)
	case CondIn:
		if len(c.Values) == 0 {
			return Invalidf(field+".in.values", "at least one value is required")
		}
		for i, v := range c.Values {
			f := fmt.Sprintf("%s.in.values[%d]", field, i)
			if err := checkScalarKind(f, v); err != nil {
				return err
			}
			if first := c.Values[0].Kind; v.Kind != first {
				return Invalidf(f, "type mismatch: %s in a list of %s", v.Kind, first)
			}
		}
		return nil
	case CondRange:
		r := c.Range
		if r.Gt == nil && r.Gte == nil && r.Lt == nil && r.Lte == nil {
			return Invalidf(field+".range", "at least one of gt, gte, lt, lte is required")
		}
		return nil
	}
	return Invalidf(field, "one of eq, ne, in, range, exists must be set")
}

// checkScalarKind refuses a scalar of no kind (or of KindList), which only Go code can build.
func checkScalarKind(field string, s Scalar) error {
	switch s.Kind {
	case KindString, KindNumber, KindBool:
		return nil
	}
	return Invalidf(field, "a string, number or bool value is required")
}

// MatchFilter reports whether metadata md satisfies f (nil matches everything). It is the reference semantics
// every store implements (see CondOp's values): comparisons with a value of another type are false, and
// comparisons with a stored list test its elements. Range is numeric only. f should have passed
// ValidateFilter; an unset operator evaluates to false.
func MatchFilter(f *Filter, md map[string]Value) bool { return MatchFilterLookup(f, metadataMap(md)) }

// MetadataLookup reads one key of a record's metadata: its value and whether the key is set. A store that
// keeps metadata encoded implements it to evaluate filters without building a map per record.
type MetadataLookup interface {
	Lookup(key string) (Value, bool)
}

// metadataMap is a metadata map as a MetadataLookup.
type metadataMap map[string]Value

func (m metadataMap) Lookup(key string) (Value, bool) {
	v, ok := m[key]
	return v, ok
}

// MatchFilterLookup is MatchFilter over metadata read through md, one key per condition.
func MatchFilterLookup(f *Filter, md MetadataLookup) bool {
	if f == nil {
		return true
	}
	switch f.Op {
	case FilterField:
		return matchCondition(f.Cond, md)
	case FilterAll:
		for _, sub := range f.Filters {
			if !MatchFilterLookup(sub, md) {
				return false
			}
		}
		return true
	case FilterAny:
		for _, sub := range f.Filters {
			if MatchFilterLookup(sub, md) {
				return true
			}
		}
		return false
	case FilterNot:
		if f.Not == nil {
			return false
		}
		return !MatchFilterLookup(f.Not, md)
	}
	return false
}

func matchCondition(c Condition, md MetadataLookup) bool {
	v, ok := md.Lookup(c.Key)
	switch c.Op {
	case CondExists:
		return ok == c.Exists
	case CondEq:
		return ok && valueEq(v, c.Value)
	case CondNe:
		return !ok || !valueEq(v, c.Value)
	case CondIn:
		if !ok {
			return false
		}
		for _, s := range c.Values {
			if valueEq(v, s) {
				return true
			}
		}
		return false
	case CondRange:
		if !ok {
			return false
		}
		switch v.Kind {
		case KindNumber:
			return inRange(v.Num, c.Range)
		case KindList:
			for _, s := range v.List {
				if s.Kind == KindNumber && inRange(s.Num, c.Range) {
					return true
				}
			}
		}
		return false
	}
	return false
}

func inRange(x float64, r Range) bool {
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

// valueEq reports whether a stored value equals the scalar s, or, for a list, contains it.
func valueEq(v Value, s Scalar) bool {
	if v.Kind != KindList {
		return v.Scalar.Equal(s)
	}
	for _, e := range v.List {
		if e.Equal(s) {
			return true
		}
	}
	return false
}
