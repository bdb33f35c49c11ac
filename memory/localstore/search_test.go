package localstore

import (
	"context"
	"fmt"
	"math"
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
		got := scanChunks(n, dim, k, func(lo, hi int, h *topK) {
			for i := lo; i < hi; i++ {
				if i%7 != 0 {
					h.offer(scored{i, scores[i]})
				}
			}
		})
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
			if sc := naiveDot(q, ns.vecs.row(i)) * ns.inv[i]; sc > best {
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
	// The memory-bandwidth floor: a streaming read of the same float32 bytes, split like the scan, best of 10.
	flat := make([]float32, 0, n*dim)
	for i := range n {
		flat = append(flat, ns.vecs.row(i)...)
	}
	floorNs := math.MaxFloat64
	for range baseRuns {
		t0 := time.Now()
		StreamRead(flat)
		floorNs = min(floorNs, float64(time.Since(t0).Nanoseconds()))
	}
	for _, kind := range []memory.IndexKind{memory.IndexExact, memory.IndexHNSW} {
		name := map[memory.IndexKind]string{memory.IndexExact: "exact", memory.IndexHNSW: "quantised"}[kind]
		b.Run(name, func(b *testing.B) {
			ns.meta.IndexKind = kind
			if _, err := s.Search(ctx, "t", "ns", memory.Query{Vector: q, TopK: 10}); err != nil {
				b.Fatal(err)
			}
			s.waitIndexes() // a kind-HNSW namespace's index builds in the background after its first search
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
			b.ReportMetric(floorNs/1e6, "f32_floor_ms/op")
			b.ReportMetric(perOp/floorNs, "x_f32_floor")
		})
	}
}

// TestQuantised checks the int8 kernel against a scalar loop, and that the quantised scan with re-ranking finds
// the exact top 10 on clustered data.
func TestQuantised(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 15, 16, 17, 33, 768} {
		a, b := make([]int8, n), make([]int8, n)
		var want int32
		for i := range a {
			a[i], b[i] = int8(r.IntN(255)-127), int8(r.IntN(255)-127)
			want += int32(a[i]) * int32(b[i])
		}
		if got := dotInt8(a, b); got != want {
			t.Errorf("dotInt8 n=%d = %d, want %d", n, got, want)
		}
	}
	const n, dim = 12000, 96
	s, centroids, vec := exactAndIndexed(t, r, "quant", n, dim, 20)
	ctx := context.Background()
	if !s.tenants["t"]["quant"].useQuantised() || s.tenants["t"]["exact"].useQuantised() {
		t.Fatal("index kinds do not select the scans")
	}
	found, total := 0, 0
	for range 50 {
		q := memory.Query{Vector: vec(centroids[r.IntN(len(centroids))]), TopK: 10}
		want, err := s.Search(ctx, "t", "exact", q)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Search(ctx, "t", "quant", q)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range got {
			for _, w := range want {
				if g.Record.ID == w.Record.ID {
					found++
				}
			}
		}
		total += len(want)
	}
	if recall := float64(found) / float64(total); recall < 0.99 {
		t.Errorf("quantised recall@10 = %.3f, want >= 0.99", recall)
	}
}

// TestIVF checks the IVF index of kind-HNSW namespaces: recall against exact search on clustered data, and that
// writes after the build keep every live slot filed exactly once.
func TestIVF(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	const n, dim = IVFMinRows + 500, 64
	s, centroids, vec := exactAndIndexed(t, r, "ivf", n, dim, 50)
	ctx := context.Background()
	recall := func() float64 {
		found, total := 0, 0
		for range 40 {
			q := memory.Query{Vector: vec(centroids[r.IntN(len(centroids))]), TopK: 10}
			want, _ := s.Search(ctx, "t", "exact", q)
			got, err := s.Search(ctx, "t", "ivf", q)
			if err != nil || len(got) != 10 {
				t.Fatalf("ivf search: %d hits, %v", len(got), err)
			}
			for _, g := range got {
				for _, w := range want {
					found += map[bool]int{true: 1}[g.Record.ID == w.Record.ID]
				}
			}
			total += len(want)
		}
		return float64(found) / float64(total)
	}
	// The first search starts the build in the background and is answered by the int8 scan meanwhile.
	if got := recall(); got < 0.95 {
		t.Errorf("recall@10 while the ivf index builds = %.3f, want >= 0.95", got)
	}
	s.waitIndexes()
	if got := recall(); got < 0.95 {
		t.Errorf("ivf recall@10 = %.3f, want >= 0.95", got)
	}
	ns := s.tenants["t"]["ivf"]
	if ns.ivf.Load() == nil {
		t.Fatal("ivf index not built")
	}
	// Writes after the build: delete, update, insert.
	var del []string
	for i := 0; i < 600; i += 3 {
		del = append(del, fmt.Sprint(i))
	}
	upd := []memory.Record{{ID: "1", Vector: vec(centroids[0])}, {ID: "new", Vector: vec(centroids[1])}}
	for _, name := range []string{"exact", "ivf"} {
		if _, err := s.Delete(ctx, "t", name, del, nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Upsert(ctx, "t", name, upd); err != nil {
			t.Fatal(err)
		}
	}
	x := ns.ivf.Load()
	seen := make([]int, len(ns.ids))
	for c, l := range x.lists {
		for p, slot := range l {
			seen[slot]++
			if x.where[slot] != int32(c) || x.pos[slot] != int32(p) {
				t.Fatalf("slot %d misfiled", slot)
			}
		}
	}
	for slot, c := range seen {
		if c != 1 || len(x.where) != len(ns.ids) {
			t.Fatalf("slot %d filed %d times (%d filed, %d slots)", slot, c, len(x.where), len(ns.ids))
		}
	}
	if got := recall(); got < 0.95 {
		t.Errorf("ivf recall@10 after writes = %.3f, want >= 0.95", got)
	}
}

// TestQuantizeRounds checks the int8 codes against math.Round of the scaled vector.
func TestQuantizeRounds(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, 1000)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	v[3], v[4] = 0, float32(math.Copysign(0, -1))
	dst := make([]int8, len(v))
	scale := quantize(dst, v)
	for i, x := range v {
		if want := int8(math.Round(float64(x * (1 / scale)))); dst[i] != want && math.Abs(float64(x/scale)-float64(want)) > 0.5+1e-4 {
			t.Fatalf("quantize(%v) = %d, want %d", x, dst[i], want)
		}
	}
}

// clusters draws n centroids of dim from r and returns them with near, which draws a vector around a centroid
// exactAndIndexed opens a store with two cosine namespaces of tenant "t", "exact" of kind exact and indexed of
// kind HNSW, both holding the same n records of dim dimensions drawn near k random centroids (see [clusters]),
// and returns it with the centroids and the sampler; the store is closed when the test ends.
func exactAndIndexed(t *testing.T, r *rand.Rand, indexed string, n, dim, k int) (*Store, [][]float32, func([]float32) []float32) {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	for _, name := range []string{"exact", indexed} {
		kind := map[string]memory.IndexKind{"exact": memory.IndexExact, indexed: memory.IndexHNSW}[name]
		if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: name, Dimension: dim, Metric: memory.MetricCosine, IndexKind: kind}); err != nil {
			t.Fatal(err)
		}
	}
	centroids, vec := clusters(r, dim, k)
	recs := make([]memory.Record, n)
	for i := range recs {
		recs[i] = memory.Record{ID: fmt.Sprint(i), Vector: vec(centroids[r.IntN(len(centroids))])}
	}
	for _, name := range []string{"exact", indexed} {
		if err := s.Upsert(ctx, "t", name, recs); err != nil {
			t.Fatal(err)
		}
	}
	return s, centroids, vec
}

// (spread 0.35) or, given nil, a vector like a centroid: clustered data, which suits the IVF index.
func clusters(r *rand.Rand, dim, n int) ([][]float32, func(c []float32) []float32) {
	near := func(c []float32) []float32 {
		v := make([]float32, dim)
		for i := range v {
			v[i] = float32(r.NormFloat64())
			if c != nil {
				v[i] = v[i]*0.35 + c[i]
			}
		}
		return v
	}
	centroids := make([][]float32, n)
	for i := range centroids {
		centroids[i] = near(nil)
	}
	return centroids, near
}
