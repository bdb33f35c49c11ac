package memoryrpc

import (
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/memory"
)

func seedFilters() []*memoryv1.Filter {
	lo, hi := 1.0, 5.0
	field := func(c *memoryv1.FieldCondition) *memoryv1.Filter {
		return &memoryv1.Filter{Kind: &memoryv1.Filter_Field{Field: c}}
	}
	eq := field(&memoryv1.FieldCondition{Key: "a", Op: &memoryv1.FieldCondition_Eq{Eq: &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: "x"}}}})
	rng := field(&memoryv1.FieldCondition{Key: "n", Op: &memoryv1.FieldCondition_Range{Range: &memoryv1.Range{Gte: &lo, Lt: &hi}}})
	in := field(&memoryv1.FieldCondition{Key: "b", Op: &memoryv1.FieldCondition_In{In: &memoryv1.ScalarList{Values: []*memoryv1.Scalar{{Kind: &memoryv1.Scalar_NumberValue{NumberValue: 1}}, {Kind: &memoryv1.Scalar_BoolValue{BoolValue: true}}}}}})
	return []*memoryv1.Filter{
		eq, rng, in,
		{Kind: &memoryv1.Filter_All{All: &memoryv1.FilterList{Filters: []*memoryv1.Filter{eq, {Kind: &memoryv1.Filter_Not{Not: rng}}}}}},
		{Kind: &memoryv1.Filter_Any{Any: &memoryv1.FilterList{Filters: []*memoryv1.Filter{in, field(&memoryv1.FieldCondition{Key: "c", Op: &memoryv1.FieldCondition_Exists{Exists: true}})}}}},
	}
}

var fuzzMetadata = []map[string]memory.Value{
	nil,
	{"a": memory.StringValue("x"), "n": memory.NumberValue(2)},
	{"b": memory.ListValue(memory.Number(1), memory.Scalar{}), "c": {}},
}

// FuzzValidateFilter feeds arbitrary wire bytes as a Filter through what a request's filter goes through:
// protovalidate (the contract's rules), the conversion to the domain's filter, and memory.ValidateFilter (the
// rest). None of it may panic, and a filter that passes evaluates deterministically and respects NOT.
func FuzzValidateFilter(f *testing.F) {
	v, err := protovalidate.New()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seedFilters() {
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var flt memoryv1.Filter
		if proto.Unmarshal(b, &flt) != nil {
			return
		}
		err := v.Validate(&flt)
		df := FilterFromProto(&flt)
		if err == nil {
			err = memory.ValidateFilter("filter", df)
		}
		for _, md := range fuzzMetadata {
			got := memory.MatchFilter(df, md)
			if err != nil {
				continue
			}
			if memory.MatchFilter(df, md) != got {
				t.Fatal("MatchFilter is not deterministic")
			}
			if memory.MatchFilter(memory.Not(df), md) == got {
				t.Fatal("NOT filter does not negate")
			}
		}
	})
}

// FuzzDecodePageToken checks arbitrary tokens never panic and valid ones round-trip.
func FuzzDecodePageToken(f *testing.F) {
	f.Add(EncodePageToken("notes"))
	f.Add("")
	f.Add("bnMxOg")
	f.Add("!!!")
	f.Fuzz(func(t *testing.T, tok string) {
		name, err := DecodePageToken(tok)
		if err != nil {
			return
		}
		if name == "" {
			if tok != "" {
				t.Fatalf("token %q decodes to an empty name", tok)
			}
			return
		}
		if back, err := DecodePageToken(EncodePageToken(name)); err != nil || back != name {
			t.Fatalf("round trip of %q = %q, %v", name, back, err)
		}
	})
}
