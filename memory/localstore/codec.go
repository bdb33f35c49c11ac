package localstore

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/loom-dev/loom/memory"
)

// The log holds namespaces and records in the protobuf encoding of the contract's messages loom.memory.v1
// Namespace and Record (with Value, ScalarList, Scalar and google.protobuf.Timestamp inside), as the store has
// always written them: fields in field-number order, proto3 defaults left out, map entries sorted by key (what
// proto.Marshal writes with Deterministic set), so logs of earlier versions open unchanged and logs written now
// open in them. The codec is written out here with protowire, rather than through the generated types, so that
// the embedded store does not depend on the generated code and what it pulls in; golden_test.go holds a log of
// the earlier encoder, and codec_test.go compares this one with proto.Marshal.
//
// Decoding accepts any valid encoding of those messages: fields in any order, packed or unpacked vectors,
// unknown fields (skipped). Strings must be valid UTF-8, as proto3 requires, on both sides.

// Field numbers of the contract's messages.
const (
	// Namespace
	nsName        = 1
	nsDimension   = 2
	nsMetric      = 3
	nsEmbedder    = 4
	nsIndex       = 5
	nsDescription = 6
	nsCreateTime  = 7
	// Embedder
	embedderProvider = 1
	embedderModel    = 2
	// IndexConfig
	indexKind           = 1
	indexM              = 2
	indexEfConstruction = 3
	indexEfSearch       = 4
	// Record
	recID         = 1
	recText       = 2
	recVector     = 3
	recMetadata   = 4
	recExpireTime = 6
	recUpdateTime = 7
	// map entry
	entryKey   = 1
	entryValue = 2
	// Value and Scalar
	valString = 1
	valNumber = 2
	valBool   = 3
	valList   = 4
	// ScalarList
	listValues = 1
	// google.protobuf.Timestamp
	tsSeconds = 1
	tsNanos   = 2
)

// The one-byte tags of a metadata entry and of its key, as appendMetadata writes them.
const (
	recMetadataTag = recMetadata<<3 | byte(protowire.BytesType)
	entryKeyTag    = entryKey<<3 | byte(protowire.BytesType)
)

var errUTF8 = errors.New("invalid UTF-8")

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
}

// appendInt32 appends a proto3 int32 or enum field (a negative value is sign-extended to ten bytes).
func appendInt32(b []byte, num protowire.Number, v int) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), uint64(int64(int32(v))))
}

// appendMessage appends field num holding the message that body appends, length first.
func appendMessage(b []byte, num protowire.Number, size int, body func([]byte) []byte) []byte {
	b = protowire.AppendVarint(protowire.AppendTag(b, num, protowire.BytesType), uint64(size))
	return body(b)
}

func timestampSize(t time.Time) int {
	n := 0
	if s := t.Unix(); s != 0 {
		n += 1 + protowire.SizeVarint(uint64(s))
	}
	if ns := t.Nanosecond(); ns != 0 {
		n += 1 + protowire.SizeVarint(uint64(ns))
	}
	return n
}

// appendTimestamp appends t as a google.protobuf.Timestamp field, unless t is the zero time.
func appendTimestamp(b []byte, num protowire.Number, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return appendMessage(b, num, timestampSize(t), func(b []byte) []byte {
		if s := t.Unix(); s != 0 {
			b = protowire.AppendVarint(protowire.AppendTag(b, tsSeconds, protowire.VarintType), uint64(s))
		}
		if ns := t.Nanosecond(); ns != 0 {
			b = protowire.AppendVarint(protowire.AppendTag(b, tsNanos, protowire.VarintType), uint64(ns))
		}
		return b
	})
}

func checkUTF8(what string, ss ...string) error {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%s: %w", what, errUTF8)
		}
	}
	return nil
}

// appendNamespace appends ns as a Namespace message (without its length), stats left out. The embedder and the
// index config are always present, as the contract's Namespace has always been logged.
func appendNamespace(b []byte, ns memory.Namespace) ([]byte, error) {
	if err := checkUTF8("namespace", ns.Name, ns.EmbedderProvider, ns.EmbedderModel, ns.Description); err != nil {
		return nil, err
	}
	b = appendString(b, nsName, ns.Name)
	b = appendInt32(b, nsDimension, ns.Dimension)
	b = appendInt32(b, nsMetric, int(ns.Metric))
	emb := appendString(appendString(nil, embedderProvider, ns.EmbedderProvider), embedderModel, ns.EmbedderModel)
	b = appendMessage(b, nsEmbedder, len(emb), func(b []byte) []byte { return append(b, emb...) })
	var idx []byte
	idx = appendInt32(idx, indexKind, int(ns.IndexKind))
	idx = appendInt32(idx, indexM, ns.M)
	idx = appendInt32(idx, indexEfConstruction, ns.EfConstruction)
	idx = appendInt32(idx, indexEfSearch, ns.EfSearch)
	b = appendMessage(b, nsIndex, len(idx), func(b []byte) []byte { return append(b, idx...) })
	b = appendString(b, nsDescription, ns.Description)
	return appendTimestamp(b, nsCreateTime, ns.CreateTime), nil
}

// scalarSize is the size of s as a Value or Scalar message: its one field.
func scalarSize(s memory.Scalar) int {
	switch s.Kind {
	case memory.KindString:
		return 1 + protowire.SizeBytes(len(s.Str))
	case memory.KindNumber:
		return 1 + 8
	case memory.KindBool:
		return 1 + 1
	}
	return 0
}

func appendScalar(b []byte, s memory.Scalar) []byte {
	switch s.Kind {
	case memory.KindString:
		return protowire.AppendString(protowire.AppendTag(b, valString, protowire.BytesType), s.Str)
	case memory.KindNumber:
		return protowire.AppendFixed64(protowire.AppendTag(b, valNumber, protowire.Fixed64Type), math.Float64bits(s.Num))
	case memory.KindBool:
		return protowire.AppendVarint(protowire.AppendTag(b, valBool, protowire.VarintType), protowire.EncodeBool(s.Bool))
	}
	return b
}

func listSize(l []memory.Scalar) int {
	n := 0
	for _, s := range l {
		n += 1 + protowire.SizeBytes(scalarSize(s))
	}
	return n
}

// valueSize is the size of v as a Value message: what the embedded store counts for a metadata value.
func valueSize(v memory.Value) int {
	if v.Kind == memory.KindList {
		return 1 + protowire.SizeBytes(listSize(v.List))
	}
	return scalarSize(v.Scalar)
}

func appendValue(b []byte, v memory.Value) []byte {
	if v.Kind != memory.KindList {
		return appendScalar(b, v.Scalar)
	}
	return appendMessage(b, valList, listSize(v.List), func(b []byte) []byte {
		for _, s := range v.List {
			b = appendMessage(b, listValues, scalarSize(s), func(b []byte) []byte { return appendScalar(b, s) })
		}
		return b
	})
}

// appendRecord appends r as a Record message (without its length), vector included.
func appendRecord(b []byte, r *memory.Record) ([]byte, error) {
	if err := checkUTF8(fmt.Sprintf("record %q", r.ID), r.ID, r.Text); err != nil {
		return nil, err
	}
	b = appendString(b, recID, r.ID)
	b = appendString(b, recText, r.Text)
	if len(r.Vector) > 0 {
		b = protowire.AppendVarint(protowire.AppendTag(b, recVector, protowire.BytesType), uint64(4*len(r.Vector)))
		for _, x := range r.Vector {
			b = protowire.AppendFixed32(b, math.Float32bits(x))
		}
	}
	for k, v := range r.Metadata {
		if err := checkUTF8(fmt.Sprintf("record %q metadata", r.ID), k, v.Str); err != nil {
			return nil, err
		}
		for _, s := range v.List {
			if err := checkUTF8(fmt.Sprintf("record %q metadata", r.ID), s.Str); err != nil {
				return nil, err
			}
		}
	}
	b = appendMetadata(b, r.Metadata)
	b = appendTimestamp(b, recExpireTime, r.ExpireTime)
	return appendTimestamp(b, recUpdateTime, r.UpdateTime), nil
}

// appendMetadata appends md as the Record's map field: one entry per key, sorted by key. Strings are not
// checked (appendRecord checks them).
func appendMetadata(b []byte, md map[string]memory.Value) []byte {
	if len(md) == 0 {
		return b
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := md[k]
		vs := valueSize(v)
		// A map entry always holds its key and its value, even when empty.
		b = appendMessage(b, recMetadata, entrySize(k, vs), func(b []byte) []byte {
			b = protowire.AppendString(protowire.AppendTag(b, entryKey, protowire.BytesType), k)
			return appendMessage(b, entryValue, vs, func(b []byte) []byte { return appendValue(b, v) })
		})
	}
	return b
}

// entrySize is the size of a map entry of key k and a value of vs bytes.
func entrySize(k string, vs int) int {
	return 1 + protowire.SizeBytes(len(k)) + 1 + protowire.SizeBytes(vs)
}

// encodeMetadata returns md encoded as appendMetadata does, in a slice of exactly its size (nil when md is
// empty): how the store keeps a record's metadata in memory, decoded only when a filter or a result reads it.
func encodeMetadata(md map[string]memory.Value) []byte {
	if len(md) == 0 {
		return nil
	}
	n := 0
	for k, v := range md {
		n += 1 + protowire.SizeBytes(entrySize(k, valueSize(v)))
	}
	return appendMetadata(make([]byte, 0, n), md)
}

// encodedMetadata is metadata as encodeMetadata writes it. Its methods read only what it holds, so an
// invalid encoding (which the store never keeps) reads as fewer keys, never as a panic.
type encodedMetadata []byte

// Lookup decodes the value of key, scanning the entries until it is found.
func (m encodedMetadata) Lookup(key string) (memory.Value, bool) {
	for b := []byte(m); len(b) > 0; {
		// Fast path: an entry as appendMetadata writes it with a short key, [tag 4][len][tag 1][key len][key]...,
		// all lengths one byte.
		if len(b) >= 4 && b[0] == recMetadataTag && b[1] < 0x80 && b[2] == entryKeyTag && b[3] < 0x80 && int(b[3])+2 <= int(b[1]) && int(b[1])+2 <= len(b) {
			entry := b[2 : 2+int(b[1])]
			b = b[2+int(b[1]):]
			if string(entry[2:2+int(entry[1])]) != key {
				continue
			}
			_, v := entryParts(entry)
			val, err := lookupValue(v)
			return val, err == nil
		}
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return memory.Value{}, false
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return memory.Value{}, false
		}
		field := b[:n]
		b = b[n:]
		if num != recMetadata || typ != protowire.BytesType {
			continue
		}
		entry, _ := protowire.ConsumeBytes(field)
		k, v := entryParts(entry)
		if string(k) == key {
			val, err := lookupValue(v)
			return val, err == nil
		}
	}
	return memory.Value{}, false
}

// entryParts returns the key and value bytes of a map entry (the last of each, as protobuf merges them). It
// is written without closures, as filters call it for every candidate row.
func entryParts(entry []byte) (key, value []byte) {
	for len(entry) > 0 {
		num, typ, n := protowire.ConsumeTag(entry)
		if n < 0 {
			return key, value
		}
		entry = entry[n:]
		n = protowire.ConsumeFieldValue(num, typ, entry)
		if n < 0 {
			return key, value
		}
		if typ == protowire.BytesType && (num == entryKey || num == entryValue) {
			p, _ := protowire.ConsumeBytes(entry[:n])
			if num == entryKey {
				key = p
			} else {
				value = p
			}
		}
		entry = entry[n:]
	}
	return key, value
}

// lookupValue decodes a Value message: a lone number or bool field, the common case of a filter, without
// allocating; anything else through decodeValue.
func lookupValue(b []byte) (memory.Value, error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n > 0 {
		switch {
		case num == valNumber && typ == protowire.Fixed64Type && len(b) == n+8:
			x, _ := protowire.ConsumeFixed64(b[n:])
			return memory.NumberValue(math.Float64frombits(x)), nil
		case num == valBool && typ == protowire.VarintType:
			if x, m := protowire.ConsumeVarint(b[n:]); m > 0 && n+m == len(b) {
				return memory.BoolValue(protowire.DecodeBool(x)), nil
			}
		}
	}
	return decodeValue(b)
}

// decodeMetadata returns m as a map (nil when empty), for a result.
func decodeMetadata(m []byte) map[string]memory.Value {
	var r memory.Record
	_ = fields(m, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
		if num != recMetadata {
			return 0, nil
		}
		return consumeEntry(typ, v, &r)
	})
	return r.Metadata
}

// consumeEntry reads one map entry of the Record's metadata into r.
func consumeEntry(typ protowire.Type, v []byte, r *memory.Record) (int, error) {
	return consumeMessage(typ, v, func(m []byte) error {
		var key string
		var val memory.Value
		err := fields(m, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
			switch num {
			case entryKey:
				return consumeString(typ, v, &key)
			case entryValue:
				return consumeMessage(typ, v, func(m []byte) error {
					var err error
					val, err = decodeValue(m)
					return err
				})
			}
			return 0, nil
		})
		if err != nil {
			return err
		}
		if r.Metadata == nil {
			r.Metadata = map[string]memory.Value{}
		}
		r.Metadata[key] = val
		return nil
	})
}

// RecordSize is the bytes a record counts for in the embedded store's stats and quota: its id, text, vector
// (4 bytes an element) and metadata (keys, and the protobuf size of values).
func RecordSize(r memory.Record) int64 {
	size := int64(len(r.ID) + len(r.Text) + 4*len(r.Vector))
	for k, v := range r.Metadata {
		size += int64(len(k) + valueSize(v))
	}
	return size
}

// fields calls f with each field of the message b; f returns the bytes it consumed of the value (negative for
// an error), or 0 to have the field skipped as unknown.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) (int, error)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		used, err := f(num, typ, b)
		if err != nil {
			return err
		}
		if used == 0 {
			used = protowire.ConsumeFieldValue(num, typ, b)
		}
		if used < 0 {
			return protowire.ParseError(used)
		}
		b = b[used:]
	}
	return nil
}

// The consume functions read one field value of the wire type they expect, returning its length (negative for
// malformed input) or 0 when typ is another type (the field is then unknown, as protobuf treats it).

func consumeString(typ protowire.Type, b []byte, dst *string) (int, error) {
	if typ != protowire.BytesType {
		return 0, nil
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return n, nil
	}
	if !utf8.Valid(v) {
		return 0, errUTF8
	}
	*dst = string(v)
	return n, nil
}

func consumeVarint(typ protowire.Type, b []byte, dst *uint64) int {
	if typ != protowire.VarintType {
		return 0
	}
	v, n := protowire.ConsumeVarint(b)
	if n >= 0 {
		*dst = v
	}
	return n
}

func consumeInt32(typ protowire.Type, b []byte, dst *int) int {
	var v uint64
	n := consumeVarint(typ, b, &v)
	if n > 0 {
		*dst = int(int32(v))
	}
	return n
}

// consumeMessage reads a length-delimited field and parses it with parse.
func consumeMessage(typ protowire.Type, b []byte, parse func([]byte) error) (int, error) {
	if typ != protowire.BytesType {
		return 0, nil
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return n, nil
	}
	return n, parse(v)
}

// consumeTimestamp reads a google.protobuf.Timestamp into dst, in UTC.
func consumeTimestamp(typ protowire.Type, b []byte, dst *time.Time) (int, error) {
	return consumeMessage(typ, b, func(m []byte) error {
		var secs, nanos uint64
		if !dst.IsZero() { // a repeated field merges
			secs, nanos = uint64(dst.Unix()), uint64(dst.Nanosecond())
		}
		err := fields(m, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
			switch num {
			case tsSeconds:
				return consumeVarint(typ, v, &secs), nil
			case tsNanos:
				return consumeVarint(typ, v, &nanos), nil
			}
			return 0, nil
		})
		*dst = time.Unix(int64(secs), int64(int32(nanos))).UTC()
		return err
	})
}

// decodeNamespace parses a Namespace message.
func decodeNamespace(b []byte) (memory.Namespace, error) {
	var ns memory.Namespace
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
		switch num {
		case nsName:
			return consumeString(typ, v, &ns.Name)
		case nsDimension:
			return consumeInt32(typ, v, &ns.Dimension), nil
		case nsMetric:
			var m int
			n := consumeInt32(typ, v, &m)
			if n > 0 {
				ns.Metric = memory.Metric(m)
			}
			return n, nil
		case nsEmbedder:
			return consumeMessage(typ, v, func(m []byte) error {
				return fields(m, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
					switch num {
					case embedderProvider:
						return consumeString(typ, v, &ns.EmbedderProvider)
					case embedderModel:
						return consumeString(typ, v, &ns.EmbedderModel)
					}
					return 0, nil
				})
			})
		case nsIndex:
			return consumeMessage(typ, v, func(m []byte) error {
				return fields(m, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
					switch num {
					case indexKind:
						var k int
						n := consumeInt32(typ, v, &k)
						if n > 0 {
							ns.IndexKind = memory.IndexKind(k)
						}
						return n, nil
					case indexM:
						return consumeInt32(typ, v, &ns.M), nil
					case indexEfConstruction:
						return consumeInt32(typ, v, &ns.EfConstruction), nil
					case indexEfSearch:
						return consumeInt32(typ, v, &ns.EfSearch), nil
					}
					return 0, nil
				})
			})
		case nsDescription:
			return consumeString(typ, v, &ns.Description)
		case nsCreateTime:
			return consumeTimestamp(typ, v, &ns.CreateTime)
		}
		return 0, nil
	})
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("decode namespace: %w", err)
	}
	return ns, nil
}

// decodeScalar parses the fields of a Value or Scalar message into s; list elements go to list when it is
// non-nil (a Value), and are unknown fields otherwise (a Scalar).
func decodeScalar(b []byte, s *memory.Scalar, list *[]memory.Scalar) error {
	return fields(b, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
		switch num {
		case valString:
			n, err := consumeString(typ, v, &s.Str)
			if n > 0 {
				s.Kind = memory.KindString
			}
			return n, err
		case valNumber:
			if typ != protowire.Fixed64Type {
				return 0, nil
			}
			x, n := protowire.ConsumeFixed64(v)
			if n > 0 {
				s.Kind, s.Num = memory.KindNumber, math.Float64frombits(x)
			}
			return n, nil
		case valBool:
			var x uint64
			n := consumeVarint(typ, v, &x)
			if n > 0 {
				s.Kind, s.Bool = memory.KindBool, protowire.DecodeBool(x)
			}
			return n, nil
		case valList:
			if list == nil {
				return 0, nil
			}
			return consumeMessage(typ, v, func(m []byte) error {
				if s.Kind != memory.KindList { // another member of the oneof came first: the last one wins
					*list = nil
				}
				s.Kind = memory.KindList
				return fields(m, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
					if num != listValues {
						return 0, nil
					}
					return consumeMessage(typ, v, func(m []byte) error {
						var e memory.Scalar
						if err := decodeScalar(m, &e, nil); err != nil {
							return err
						}
						*list = append(*list, e)
						return nil
					})
				})
			})
		}
		return 0, nil
	})
}

func decodeValue(b []byte) (memory.Value, error) {
	var v memory.Value
	err := decodeScalar(b, &v.Scalar, &v.List)
	if v.Kind != memory.KindList {
		v.List = nil
	}
	return v, err
}

// decodeRecord parses a Record message; ttl, which is never logged, is skipped like an unknown field.
func decodeRecord(b []byte) (memory.Record, error) {
	var r memory.Record
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte) (int, error) {
		switch num {
		case recID:
			return consumeString(typ, v, &r.ID)
		case recText:
			return consumeString(typ, v, &r.Text)
		case recVector:
			switch typ {
			case protowire.BytesType: // packed
				p, n := protowire.ConsumeBytes(v)
				if n < 0 {
					return n, nil
				}
				if len(p)%4 != 0 {
					return 0, errors.New("vector: truncated element")
				}
				r.Vector = slices.Grow(r.Vector, len(p)/4)
				for ; len(p) > 0; p = p[4:] {
					x, _ := protowire.ConsumeFixed32(p)
					r.Vector = append(r.Vector, math.Float32frombits(x))
				}
				return n, nil
			case protowire.Fixed32Type:
				x, n := protowire.ConsumeFixed32(v)
				if n > 0 {
					r.Vector = append(r.Vector, math.Float32frombits(x))
				}
				return n, nil
			}
			return 0, nil
		case recMetadata:
			return consumeEntry(typ, v, &r)
		case recExpireTime:
			return consumeTimestamp(typ, v, &r.ExpireTime)
		case recUpdateTime:
			return consumeTimestamp(typ, v, &r.UpdateTime)
		}
		return 0, nil
	})
	if err != nil {
		return memory.Record{}, fmt.Errorf("decode record: %w", err)
	}
	return r, nil
}
