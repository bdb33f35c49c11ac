package memory

// Kind is the type of a metadata Value or Scalar.
type Kind uint8

// The kinds. The zero Kind is no value at all, which no store accepts.
const (
	KindNone Kind = iota
	KindString
	KindNumber
	KindBool
	// KindList is a list of scalars; Values only.
	KindList
)

// String returns the kind's name as errors spell it: "string", "number", "bool", "list" or "unset".
func (k Kind) String() string {
	switch k {
	case KindString:
		return "string"
	case KindNumber:
		return "number"
	case KindBool:
		return "bool"
	case KindList:
		return "list"
	}
	return "unset"
}

// Scalar is a string, a number or a boolean: an element of a list Value, and the operand of a filter
// condition. Only the field of its Kind is meaningful.
type Scalar struct {
	Kind Kind
	Str  string
	Num  float64
	Bool bool
}

// String returns a string Scalar.
func String(s string) Scalar { return Scalar{Kind: KindString, Str: s} }

// Number returns a number Scalar.
func Number(f float64) Scalar { return Scalar{Kind: KindNumber, Num: f} }

// Bool returns a boolean Scalar.
func Bool(b bool) Scalar { return Scalar{Kind: KindBool, Bool: b} }

// Value is a typed metadata value: a scalar (Kind KindString, KindNumber or KindBool, in the embedded Scalar)
// or a list of scalars (Kind KindList, in List).
type Value struct {
	Scalar
	// List holds the elements of a KindList value.
	List []Scalar
}

// StringValue returns a string Value.
func StringValue(s string) Value { return Value{Scalar: String(s)} }

// NumberValue returns a number Value.
func NumberValue(f float64) Value { return Value{Scalar: Number(f)} }

// BoolValue returns a boolean Value.
func BoolValue(b bool) Value { return Value{Scalar: Bool(b)} }

// ListValue returns a list Value of ss (which it keeps, not copies).
func ListValue(ss ...Scalar) Value { return Value{Scalar: Scalar{Kind: KindList}, List: ss} }

// Equal reports whether s and o are the same scalar: the same kind and value (numbers by ==, so NaN is equal
// to nothing).
func (s Scalar) Equal(o Scalar) bool {
	if s.Kind != o.Kind {
		return false
	}
	switch s.Kind {
	case KindString:
		return s.Str == o.Str
	case KindNumber:
		return s.Num == o.Num
	case KindBool:
		return s.Bool == o.Bool
	}
	return false
}

// Equal reports whether v and o are the same value: the same kind, and the same scalar or the same elements
// in order.
func (v Value) Equal(o Value) bool {
	if v.Kind != KindList {
		return v.Scalar.Equal(o.Scalar)
	}
	if o.Kind != KindList || len(v.List) != len(o.List) {
		return false
	}
	for i := range v.List {
		if !v.List[i].Equal(o.List[i]) {
			return false
		}
	}
	return true
}
