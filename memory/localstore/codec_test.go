package localstore

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/memoryrpc"
)

// The tests here hold the codec to the generated code: what the store logged before it had its own codec was
// proto.MarshalOptions{Deterministic: true} of the messages below, and what it read back was proto.Unmarshal.

// cmpNaN compares records and namespaces with NaN equal to NaN (bit patterns aside).
var cmpNaN = cmp.Options{
	cmpopts.EquateNaNs(),
	cmpopts.EquateEmpty(),
	cmp.Comparer(func(a, b memory.Scalar) bool { return sameScalar(a, b) }),
	cmp.Comparer(func(a, b memory.Value) bool {
		return sameScalar(a.Scalar, b.Scalar) && slices.EqualFunc(a.List, b.List, sameScalar)
	}),
}

func sameScalar(a, b memory.Scalar) bool {
	return a.Kind == b.Kind && a.Str == b.Str && a.Bool == b.Bool && (a.Num == b.Num || math.IsNaN(a.Num) && math.IsNaN(b.Num))
}

// What the store logged was memoryrpc.RecordProto(r, true) and memoryrpc.NamespaceProto(ns, false), and what it
// read back memoryrpc.RecordFromProto; so the conversions of the transport stand for the store's old ones.

var (
	recordProto     = func(r memory.Record) *memoryv1.Record { return memoryrpc.RecordProto(r, true) }
	namespaceProto  = func(ns memory.Namespace) *memoryv1.Namespace { return memoryrpc.NamespaceProto(ns, false) }
	recordFromProto = memoryrpc.RecordFromProto
)

func randScalar(r *rand.Rand) memory.Scalar {
	switch r.IntN(7) {
	case 0:
		return memory.String("")
	case 1:
		return memory.String(fmt.Sprint("s", r.IntN(1000), "é"))
	case 2:
		return memory.Number(0)
	case 3:
		return memory.Number([]float64{-1.5, 1e300, math.Inf(-1), math.NaN(), 5e-324}[r.IntN(5)])
	case 4:
		return memory.Bool(false)
	case 5:
		return memory.Bool(true)
	}
	return memory.Scalar{} // a value of no kind: never stored, but encodable
}

func randTime(r *rand.Rand) time.Time {
	switch r.IntN(5) {
	case 0:
		return time.Time{}
	case 1:
		return time.Unix(0, 0).UTC()
	case 2:
		return time.Unix(-r.Int64N(1e10), r.Int64N(1e9)).UTC()
	case 3:
		return time.Unix(r.Int64N(1e10), 0).UTC()
	}
	return time.Unix(r.Int64N(1e10), r.Int64N(1e9)).UTC()
}

func randRecord(r *rand.Rand) memory.Record {
	rec := memory.Record{ID: fmt.Sprint("id-", r.IntN(100)), ExpireTime: randTime(r), UpdateTime: randTime(r)}
	if r.IntN(3) == 0 {
		rec.ID = ""
	}
	if r.IntN(2) == 0 {
		rec.Text = string(make([]byte, r.IntN(300))) + "日本"
	}
	if n := r.IntN(5); n > 0 {
		rec.Vector = make([]float32, n*50)
		for i := range rec.Vector {
			rec.Vector[i] = float32(r.NormFloat64())
		}
	}
	if n := r.IntN(6); n > 0 {
		rec.Metadata = map[string]memory.Value{}
		for i := range n {
			key := fmt.Sprint("k", i)
			if i == 0 && r.IntN(2) == 0 {
				key = ""
			}
			if r.IntN(3) == 0 {
				l := make([]memory.Scalar, r.IntN(4))
				for j := range l {
					l[j] = randScalar(r)
				}
				rec.Metadata[key] = memory.ListValue(l...)
			} else {
				rec.Metadata[key] = memory.Value{Scalar: randScalar(r)}
			}
		}
	}
	return rec
}

func TestCodecMatchesGeneratedCode(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 2000 {
		rec := randRecord(r)
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(recordProto(rec))
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendRecord(nil, &rec)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("record %d: %+v encodes as\n%x, proto.Marshal gives\n%x", i, rec, got, want)
		}
		var size int64
		for k, v := range recordProto(rec).GetMetadata() {
			size += int64(len(k) + proto.Size(v))
		}
		if wantSize := int64(len(rec.ID)+len(rec.Text)+4*len(rec.Vector)) + size; RecordSize(rec) != wantSize {
			t.Fatalf("record %d: RecordSize %d, want %d", i, RecordSize(rec), wantSize)
		}
		back, err := decodeRecord(got)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		var p memoryv1.Record
		if err := proto.Unmarshal(got, &p); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(recordFromProto(&p), back, cmpNaN); diff != "" {
			t.Fatalf("record %d decodes differently from proto.Unmarshal (-proto +codec):\n%s", i, diff)
		}
	}
	for i, ns := range []memory.Namespace{
		{},
		{Name: "n", Dimension: 4096, Metric: memory.MetricL2, CreateTime: time.Unix(1, 5).UTC()},
		{Name: "full", Dimension: 768, Metric: memory.MetricCosine, EmbedderProvider: "openai", EmbedderModel: "m", IndexKind: memory.IndexHNSW,
			M: 100, EfConstruction: 1000, EfSearch: 1000, Description: "déscription", CreateTime: time.Unix(1800000000, 999999999).UTC()},
		{Name: "neg", Dimension: -1, M: -5},
	} {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(namespaceProto(ns))
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendNamespace(nil, ns)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("namespace %d encodes as\n%x, proto.Marshal gives\n%x", i, got, want)
		}
		back, err := decodeNamespace(got)
		if err != nil || !cmp.Equal(back, ns) {
			t.Errorf("namespace %d decodes as %+v, %v; want %+v", i, back, err, ns)
		}
	}
}

// TestDecodeOtherEncodings decodes encodings proto.Marshal does not write but proto.Unmarshal reads: fields out of
// order, an unpacked vector, a vector in two runs, unknown fields, a oneof set twice.
func TestDecodeOtherEncodings(t *testing.T) {
	t.Parallel()
	var b []byte
	b = protowire.AppendTag(b, 99, protowire.BytesType) // unknown
	b = protowire.AppendString(b, "skip me")
	b = protowire.AppendTag(b, recText, protowire.BytesType)
	b = protowire.AppendString(b, "text")
	for _, x := range []float32{1, 2} { // unpacked
		b = protowire.AppendTag(b, recVector, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(x))
	}
	b = protowire.AppendTag(b, recVector, protowire.BytesType) // then packed
	b = protowire.AppendVarint(b, 4)
	b = protowire.AppendFixed32(b, math.Float32bits(3))
	b = protowire.AppendTag(b, recID, protowire.BytesType)
	b = protowire.AppendString(b, "id")
	b = protowire.AppendTag(b, recID, protowire.VarintType) // known number, wrong type: unknown
	b = protowire.AppendVarint(b, 7)
	var entry []byte
	entry = protowire.AppendTag(entry, entryValue, protowire.BytesType)
	val := appendValue(nil, memory.NumberValue(1))
	val = append(val, appendValue(nil, memory.StringValue("last"))...) // the oneof's last member wins
	entry = protowire.AppendBytes(entry, val)
	entry = protowire.AppendTag(entry, entryKey, protowire.BytesType)
	entry = protowire.AppendString(entry, "k")
	b = protowire.AppendTag(b, recMetadata, protowire.BytesType)
	b = protowire.AppendBytes(b, entry)
	b = protowire.AppendTag(b, 5, protowire.BytesType) // ttl: never logged, skipped
	b = protowire.AppendBytes(b, nil)

	var p memoryv1.Record
	if err := proto.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	got, err := decodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	want := memory.Record{ID: "id", Text: "text", Vector: []float32{1, 2, 3}, Metadata: map[string]memory.Value{"k": memory.StringValue("last")}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("decodeRecord (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(recordFromProto(&p), got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("decodeRecord against proto.Unmarshal (-proto +codec):\n%s", diff)
	}
	if _, err := decodeRecord([]byte{0x12, 0x02, 0xff, 0xfe}); err == nil {
		t.Error("invalid UTF-8 text decoded")
	}
	if _, err := appendRecord(nil, &memory.Record{ID: "a", Text: "\xff"}); err == nil {
		t.Error("invalid UTF-8 text encoded")
	}
}

// FuzzDecodeRecord checks that whatever proto.Unmarshal reads as a Record, the codec reads the same.
func FuzzDecodeRecord(f *testing.F) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		rec := randRecord(r)
		b, _ := appendRecord(nil, &rec)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeRecord(b)
		var p memoryv1.Record
		if proto.Unmarshal(b, &p) != nil {
			return
		}
		if err != nil {
			t.Fatalf("proto.Unmarshal reads it, decodeRecord says %v", err)
		}
		if diff := cmp.Diff(recordFromProto(&p), got, cmpNaN); diff != "" {
			t.Fatalf("(-proto +codec):\n%s", diff)
		}
	})
}

// TestEncodedMetadataFilters checks filters read through the store's encoded metadata (memory.MatchFilterLookup
// over a *rec) decide as memory.MatchFilter does over the map, and that a result gets the map back.
func TestEncodedMetadataFilters(t *testing.T) {
	mds := []map[string]memory.Value{
		nil,
		{"bucket": memory.NumberValue(3)},
		{"bucket": memory.StringValue("3"), "tag": memory.ListValue(memory.String("a"), memory.Number(2), memory.Bool(true))},
		{"a": memory.BoolValue(false), "b": memory.NumberValue(-1.5), "": memory.StringValue("empty key"), "ü": memory.StringValue("é")},
	}
	lo, hi := 0.0, 5.0
	filters := []*memory.Filter{
		memory.Eq("bucket", memory.Number(3)),
		memory.Eq("bucket", memory.String("3")),
		memory.Ne("bucket", memory.Number(3)),
		memory.In("tag", memory.String("b"), memory.Number(2)),
		memory.InRange("bucket", memory.Range{Gte: &lo, Lt: &hi}),
		memory.InRange("tag", memory.Range{Gt: &lo}),
		memory.Exists("tag", true),
		memory.Exists("tag", false),
		memory.Eq("", memory.String("empty key")),
		memory.Eq("ü", memory.String("é")),
		memory.All(memory.Eq("a", memory.Bool(false)), memory.Not(memory.Exists("bucket", true))),
		memory.Any(memory.Eq("b", memory.Number(-1.5)), memory.Eq("bucket", memory.Number(4))),
	}
	for i, md := range mds {
		checkEncodedMetadata(t, md)
		r := &rec{meta: encodeMetadata(md)}
		for j, f := range filters {
			if got, want := memory.MatchFilterLookup(f, r), memory.MatchFilter(f, md); got != want {
				t.Errorf("metadata %d, filter %d: encoded %v, map %v", i, j, got, want)
			}
		}
	}
}

// BenchmarkEncodedMetadataFilter is the cost of one filter check against a record's encoded metadata, beside
// the same check against a decoded map (the baseline): what a filtered search pays per candidate row.
func BenchmarkEncodedMetadataFilter(b *testing.B) {
	md := map[string]memory.Value{"bucket": memory.NumberValue(3), "source": memory.StringValue("docs")}
	f := memory.Eq("bucket", memory.Number(3))
	r := &rec{meta: encodeMetadata(md)}
	b.Run("map", func(b *testing.B) {
		for b.Loop() {
			if !memory.MatchFilter(f, md) {
				b.Fatal("no match")
			}
		}
	})
	b.Run("encoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !memory.MatchFilterLookup(f, r) {
				b.Fatal("no match")
			}
		}
	})
}
