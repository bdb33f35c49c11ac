package memoryrpc

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/memory"
)

// Conversions between the contract's messages and the domain's types. They are total: a message that
// protovalidate would refuse still converts (an unset oneof to a zero Kind or Op, which the domain refuses), so
// a handler never panics on one.

// NamespaceProto returns ns as the contract's message, stats included when withStats is set.
func NamespaceProto(ns memory.Namespace, withStats bool) *memoryv1.Namespace {
	p := &memoryv1.Namespace{
		Name:      ns.Name,
		Dimension: int32(ns.Dimension),
		Metric:    memoryv1.Metric(ns.Metric),
		Embedder:  &memoryv1.Embedder{Provider: ns.EmbedderProvider, Model: ns.EmbedderModel},
		Index: &memoryv1.IndexConfig{
			Kind:           memoryv1.IndexKind(ns.IndexKind),
			M:              int32(ns.M),
			EfConstruction: int32(ns.EfConstruction),
			EfSearch:       int32(ns.EfSearch),
		},
		Description: ns.Description,
	}
	if !ns.CreateTime.IsZero() {
		p.CreateTime = timestamppb.New(ns.CreateTime)
	}
	if withStats {
		p.Stats = &memoryv1.NamespaceStats{RecordCount: ns.Stats.RecordCount, SizeBytes: ns.Stats.SizeBytes}
	}
	return p
}

// namespaceFromProto is the inverse of NamespaceProto, without the output-only fields (create_time, stats).
func namespaceFromProto(p *memoryv1.Namespace) memory.Namespace {
	return memory.Namespace{
		Name:             p.GetName(),
		Dimension:        int(p.GetDimension()),
		Metric:           memory.Metric(p.GetMetric()),
		EmbedderProvider: p.GetEmbedder().GetProvider(),
		EmbedderModel:    p.GetEmbedder().GetModel(),
		IndexKind:        memory.IndexKind(p.GetIndex().GetKind()),
		M:                int(p.GetIndex().GetM()),
		EfConstruction:   int(p.GetIndex().GetEfConstruction()),
		EfSearch:         int(p.GetIndex().GetEfSearch()),
		Description:      p.GetDescription(),
	}
}

// RecordProto returns r as the contract's message; the vector is included only when includeVector is set.
func RecordProto(r memory.Record, includeVector bool) *memoryv1.Record {
	p := &memoryv1.Record{Id: r.ID, Text: r.Text, Metadata: metadataProto(r.Metadata)}
	if includeVector {
		p.Vector = r.Vector
	}
	if !r.ExpireTime.IsZero() {
		p.ExpireTime = timestamppb.New(r.ExpireTime)
	}
	if !r.UpdateTime.IsZero() {
		p.UpdateTime = timestamppb.New(r.UpdateTime)
	}
	return p
}

func metadataProto(md map[string]memory.Value) map[string]*memoryv1.Value {
	if md == nil {
		return nil
	}
	out := make(map[string]*memoryv1.Value, len(md))
	for k, v := range md {
		out[k] = valueProto(v)
	}
	return out
}

func valueProto(v memory.Value) *memoryv1.Value {
	switch v.Kind {
	case memory.KindString:
		return &memoryv1.Value{Kind: &memoryv1.Value_StringValue{StringValue: v.Str}}
	case memory.KindNumber:
		return &memoryv1.Value{Kind: &memoryv1.Value_NumberValue{NumberValue: v.Num}}
	case memory.KindBool:
		return &memoryv1.Value{Kind: &memoryv1.Value_BoolValue{BoolValue: v.Bool}}
	case memory.KindList:
		l := &memoryv1.ScalarList{Values: make([]*memoryv1.Scalar, len(v.List))}
		for i, s := range v.List {
			l.Values[i] = scalarProto(s)
		}
		return &memoryv1.Value{Kind: &memoryv1.Value_ListValue{ListValue: l}}
	}
	return &memoryv1.Value{}
}

func scalarProto(s memory.Scalar) *memoryv1.Scalar {
	switch s.Kind {
	case memory.KindString:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: s.Str}}
	case memory.KindNumber:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_NumberValue{NumberValue: s.Num}}
	case memory.KindBool:
		return &memoryv1.Scalar{Kind: &memoryv1.Scalar_BoolValue{BoolValue: s.Bool}}
	}
	return &memoryv1.Scalar{}
}

// RecordFromProto returns the record a message describes: id, text, vector, metadata, expire_time and
// update_time (ttl is the handler's to resolve).
func RecordFromProto(p *memoryv1.Record) memory.Record {
	r := memory.Record{ID: p.GetId(), Text: p.GetText(), Vector: p.GetVector(), Metadata: metadataFromProto(p.GetMetadata())}
	if p.GetExpireTime() != nil {
		r.ExpireTime = p.GetExpireTime().AsTime()
	}
	if p.GetUpdateTime() != nil {
		r.UpdateTime = p.GetUpdateTime().AsTime()
	}
	return r
}

func metadataFromProto(md map[string]*memoryv1.Value) map[string]memory.Value {
	if len(md) == 0 {
		return nil
	}
	out := make(map[string]memory.Value, len(md))
	for k, v := range md {
		out[k] = valueFromProto(v)
	}
	return out
}

func valueFromProto(v *memoryv1.Value) memory.Value {
	switch k := v.GetKind().(type) {
	case *memoryv1.Value_StringValue:
		return memory.StringValue(k.StringValue)
	case *memoryv1.Value_NumberValue:
		return memory.NumberValue(k.NumberValue)
	case *memoryv1.Value_BoolValue:
		return memory.BoolValue(k.BoolValue)
	case *memoryv1.Value_ListValue:
		return memory.ListValue(scalarsFromProto(k.ListValue.GetValues())...)
	}
	return memory.Value{}
}

func scalarsFromProto(ss []*memoryv1.Scalar) []memory.Scalar {
	out := make([]memory.Scalar, len(ss))
	for i, s := range ss {
		out[i] = scalarFromProto(s)
	}
	return out
}

func scalarFromProto(s *memoryv1.Scalar) memory.Scalar {
	switch k := s.GetKind().(type) {
	case *memoryv1.Scalar_StringValue:
		return memory.String(k.StringValue)
	case *memoryv1.Scalar_NumberValue:
		return memory.Number(k.NumberValue)
	case *memoryv1.Scalar_BoolValue:
		return memory.Bool(k.BoolValue)
	}
	return memory.Scalar{}
}

// FilterFromProto returns the domain filter of f (nil for nil). It checks nothing: the contract's rules are
// protovalidate's, the rest memory.ValidateFilter's, which the stores run.
func FilterFromProto(f *memoryv1.Filter) *memory.Filter {
	if f == nil {
		return nil
	}
	switch k := f.GetKind().(type) {
	case *memoryv1.Filter_Field:
		return &memory.Filter{Op: memory.FilterField, Cond: conditionFromProto(k.Field)}
	case *memoryv1.Filter_All:
		return &memory.Filter{Op: memory.FilterAll, Filters: filtersFromProto(k.All.GetFilters())}
	case *memoryv1.Filter_Any:
		return &memory.Filter{Op: memory.FilterAny, Filters: filtersFromProto(k.Any.GetFilters())}
	case *memoryv1.Filter_Not:
		return &memory.Filter{Op: memory.FilterNot, Not: FilterFromProto(k.Not)}
	}
	return &memory.Filter{}
}

func filtersFromProto(fs []*memoryv1.Filter) []*memory.Filter {
	out := make([]*memory.Filter, len(fs))
	for i, f := range fs {
		out[i] = FilterFromProto(f)
	}
	return out
}

func conditionFromProto(c *memoryv1.FieldCondition) memory.Condition {
	out := memory.Condition{Key: c.GetKey()}
	switch op := c.GetOp().(type) {
	case *memoryv1.FieldCondition_Eq:
		out.Op, out.Value = memory.CondEq, scalarFromProto(op.Eq)
	case *memoryv1.FieldCondition_Ne:
		out.Op, out.Value = memory.CondNe, scalarFromProto(op.Ne)
	case *memoryv1.FieldCondition_In:
		out.Op, out.Values = memory.CondIn, scalarsFromProto(op.In.GetValues())
	case *memoryv1.FieldCondition_Range:
		out.Op = memory.CondRange
		if r := op.Range; r != nil {
			out.Range = memory.Range{Gt: r.Gt, Gte: r.Gte, Lt: r.Lt, Lte: r.Lte}
		}
	case *memoryv1.FieldCondition_Exists:
		out.Op, out.Exists = memory.CondExists, op.Exists
	}
	return out
}
