package memoryrpc_test

import (
	"math/rand/v2"
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/memory"
)

// benchValidate measures protovalidate's check of msg.
func benchValidate(msg proto.Message) func(*testing.B) {
	return func(b *testing.B) {
		v, err := protovalidate.New()
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := v.Validate(msg); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkValidateUpsert compares the contract's per-element finite rule, as protovalidate evaluates it on
// every request, with the domain's memory.CheckVector, which checks the same, on a 1000 x 768 Upsert (3 MB,
// under the 4 MiB message limit), and prices it on one 768-d search. The baseline is CheckVector in the same run.
func BenchmarkValidateUpsert(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	req := &memoryv1.UpsertRequest{Namespace: "ns", Records: randomBatch(r, "r", 1000, 768)}
	b.Run("protovalidate", benchValidate(req))
	search := &memoryv1.SearchRequest{Namespace: "ns", TopK: 10, Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: req.GetRecords()[0].GetVector()}}}
	b.Run("protovalidate-search-768", benchValidate(search))
	b.Run("CheckVector", func(b *testing.B) {
		for b.Loop() {
			for _, rec := range req.GetRecords() {
				if err := memory.CheckVector("vector", rec.GetVector(), 768, memory.MetricCosine); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
