package localstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/loom-dev/loom/memory"
)

// TestScanParallel checks the chunked parallel scan (used from parallelMinFloats) against a full sort.
func TestScanParallel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, dim = 5000, 64 // n*dim > parallelMinFloats
	scores := make([]float32, n)
	for i := range scores {
		scores[i] = float32(r.IntN(1000)) // many ties
	}
	for _, k := range []int{1, 10, 999, n + 5} {
		got := scan(n, dim, k, func(i int) (float32, bool) { return scores[i], i%7 != 0 })
		var want []scored
		for i, s := range scores {
			if i%7 != 0 {
				want = append(want, scored{i, s})
			}
		}
		slices.SortFunc(want, func(a, b scored) int {
			if a.score != b.score {
				if a.score > b.score {
					return -1
				}
				return 1
			}
			return a.slot - b.slot
		})
		want = want[:min(k, len(want))]
		if !slices.Equal(got, want) {
			t.Errorf("k=%d: parallel scan differs from a full sort (got %d, want %d)", k, len(got), len(want))
		}
	}
}

func TestKernels(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 7, 8, 9, 768, 1001} {
		a, b := make([]float32, n), make([]float32, n)
		var d, l float64
		for i := range a {
			a[i], b[i] = float32(r.NormFloat64()), float32(r.NormFloat64())
			d += float64(a[i]) * float64(b[i])
			l += float64(a[i]-b[i]) * float64(a[i]-b[i])
		}
		if got := float64(dot(a, b)); got-d > 1e-3 || d-got > 1e-3 {
			t.Errorf("dot n=%d = %v, want %v", n, got, d)
		}
		if got := float64(l2sq(a, b)); got-l > 1e-2 || l-got > 1e-2 {
			t.Errorf("l2sq n=%d = %v, want %v", n, got, l)
		}
	}
}

func naiveDot(a, b []float32) float32 {
	var s float32
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// BenchmarkSearch measures exact top-10 search over 20k x 768 cosine vectors through the store, next to a
// baseline measured in the same run: a naive scalar loop over the same slab with a sort-free running best.
// "x_vs_naive" is baseline time / store time (above 1 means the store is faster).
func BenchmarkSearch(b *testing.B) {
	const n, dim = 20000, 768
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: dim, Metric: memory.MetricCosine}); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 7))
	vec := func() []float32 {
		v := make([]float32, dim)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	for start := 0; start < n; start += 1000 {
		recs := make([]memory.Record, 1000)
		for i := range recs {
			recs[i] = memory.Record{ID: fmt.Sprint(start + i), Vector: vec()}
		}
		if err := s.Upsert(ctx, "t", "ns", recs); err != nil {
			b.Fatal(err)
		}
	}
	q := vec()
	ns := s.tenants["t"]["ns"]

	// Baseline: the naive loop over the same data in the same run (timed by hand: testing.Benchmark cannot
	// nest inside a running benchmark).
	naive := func() int {
		best, bestI := float32(-2), -1
		for i := range n {
			if sc := naiveDot(q, ns.vecs[i*dim:(i+1)*dim]) * ns.inv[i]; sc > best {
				best, bestI = sc, i
			}
		}
		return bestI
	}
	const baseRuns = 10
	t0 := time.Now()
	for range baseRuns {
		naive()
	}
	baseNs := float64(time.Since(t0).Nanoseconds()) / baseRuns
	b.ResetTimer()
	for b.Loop() {
		hits, err := s.Search(ctx, "t", "ns", memory.Query{Vector: q, TopK: 10})
		if err != nil || len(hits) != 10 {
			b.Fatal(err)
		}
	}
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(baseNs/1e6, "naive_ms/op")
	b.ReportMetric(perOp/1e6, "store_ms/op")
	b.ReportMetric(baseNs/perOp, "x_vs_naive")
}
