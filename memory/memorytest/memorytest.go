// Package memorytest is the contract suite every memory.Store must pass: Run it from each backend's tests with a
// constructor returning a fresh, empty store.
package memorytest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/loom-dev/loom/memory"
)

// Run runs the contract suite. newStore returns a fresh, empty store for one subtest; it registers its own
// cleanup.
func Run(t *testing.T, newStore func(t *testing.T) memory.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s memory.Store)
	}{
		{"Namespaces", testNamespaces},
		{"TenantIsolation", testTenantIsolation},
		{"ExactSearch", testExactSearch},
		{"DefaultIndexRecall", testDefaultIndexRecall},
		{"Filters", testFilters},
		{"SelectiveFilter", testSelectiveFilter},
		{"MinScore", testMinScore},
		{"GetAndVectors", testGet},
		{"Delete", testDelete},
		{"TTL", testTTL},
		{"IdempotentUpsert", testIdempotentUpsert},
		{"RejectedBatchWritesNothing", testRejectedBatch},
		{"Hybrid", testHybrid},
		{"Concurrent", testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

var ctx = context.Background()

func mustCreate(t *testing.T, s memory.Store, tenant string, ns memory.Namespace) memory.Namespace {
	t.Helper()
	if ns.Metric == 0 {
		ns.Metric = memory.MetricCosine
	}
	got, err := s.CreateNamespace(ctx, tenant, ns)
	if err != nil {
		t.Fatalf("CreateNamespace(%q): %v", ns.Name, err)
	}
	return got
}

func mustUpsert(t *testing.T, s memory.Store, tenant, ns string, recs []memory.Record) {
	t.Helper()
	if err := s.Upsert(ctx, tenant, ns, recs); err != nil {
		t.Fatalf("Upsert: %v", err)
	}
}

func randVec(r *rand.Rand, dim int) []float32 {
	v := make([]float32, dim)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func count(t *testing.T, s memory.Store, tenant, ns string) int64 {
	t.Helper()
	got, err := s.GetNamespace(ctx, tenant, ns, true)
	if err != nil {
		t.Fatalf("GetNamespace: %v", err)
	}
	return got.Stats.RecordCount
}

func ids(hits []memory.Hit) []string {
	out := make([]string, len(hits))
	for i, h := range hits {
		out[i] = h.Record.ID
	}
	return out
}

func testNamespaces(t *testing.T, s memory.Store) {
	created := mustCreate(t, s, "t1", memory.Namespace{Name: "beta", Dimension: 3, Metric: memory.MetricL2, Description: "d"})
	if created.CreateTime.IsZero() {
		t.Errorf("CreateTime not set")
	}
	mustCreate(t, s, "t1", memory.Namespace{Name: "alpha", Dimension: 4})
	mustCreate(t, s, "t1", memory.Namespace{Name: "gamma", Dimension: 5})
	if _, err := s.CreateNamespace(ctx, "t1", memory.Namespace{Name: "alpha", Dimension: 4, Metric: memory.MetricCosine}); !errors.Is(err, memory.ErrAlreadyExists) {
		t.Errorf("CreateNamespace(duplicate) = %v, want ErrAlreadyExists", err)
	}
	got, err := s.GetNamespace(ctx, "t1", "beta", true)
	if err != nil {
		t.Fatalf("GetNamespace: %v", err)
	}
	if got.Name != "beta" || got.Dimension != 3 || got.Metric != memory.MetricL2 || got.Description != "d" ||
		!got.CreateTime.Equal(created.CreateTime) || got.Stats.RecordCount != 0 {
		t.Errorf("GetNamespace = %+v, want beta/3/L2/d created %v", got, created.CreateTime)
	}
	mustUpsert(t, s, "t1", "beta", []memory.Record{{ID: "a", Text: "hello", Vector: []float32{1, 2, 3}}})
	if got, _ := s.GetNamespace(ctx, "t1", "beta", true); got.Stats.RecordCount != 1 || got.Stats.SizeBytes <= 0 {
		t.Errorf("stats = %+v, want 1 record and positive size", got.Stats)
	}
	page1, err := s.ListNamespaces(ctx, "t1", "", 2)
	if err != nil {
		t.Fatalf("ListNamespaces: %v", err)
	}
	page2, err := s.ListNamespaces(ctx, "t1", "beta", 2)
	if err != nil {
		t.Fatalf("ListNamespaces: %v", err)
	}
	var names []string
	for _, n := range append(page1, page2...) {
		names = append(names, n.Name)
	}
	if want := []string{"alpha", "beta", "gamma"}; !slices.Equal(names, want) {
		t.Errorf("ListNamespaces pages = %v, want %v", names, want)
	}
	if err := s.DeleteNamespace(ctx, "t1", "beta"); err != nil {
		t.Fatalf("DeleteNamespace: %v", err)
	}
	if err := s.DeleteNamespace(ctx, "t1", "beta"); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("DeleteNamespace(again) = %v, want ErrNotFound", err)
	}
	if _, err := s.GetNamespace(ctx, "t1", "beta", true); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("GetNamespace(deleted) = %v, want ErrNotFound", err)
	}
	// A recreated namespace starts empty.
	mustCreate(t, s, "t1", memory.Namespace{Name: "beta", Dimension: 2})
	if n := count(t, s, "t1", "beta"); n != 0 {
		t.Errorf("recreated namespace has %d records, want 0", n)
	}
	if err := s.Upsert(ctx, "t1", "nope", []memory.Record{{ID: "a", Vector: []float32{1, 2}}}); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("Upsert(unknown namespace) = %v, want ErrNotFound", err)
	}
	if _, err := s.Search(ctx, "t1", "nope", memory.Query{Vector: []float32{1, 2}, TopK: 1}); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("Search(unknown namespace) = %v, want ErrNotFound", err)
	}
}

func testTenantIsolation(t *testing.T, s memory.Store) {
	mustCreate(t, s, "a", memory.Namespace{Name: "shared", Dimension: 2})
	mustUpsert(t, s, "a", "shared", []memory.Record{{ID: "x", Text: "secret", Vector: []float32{1, 0}}})
	if _, err := s.GetNamespace(ctx, "b", "shared", true); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("tenant b GetNamespace = %v, want ErrNotFound", err)
	}
	if l, _ := s.ListNamespaces(ctx, "b", "", 100); len(l) != 0 {
		t.Errorf("tenant b lists %v", l)
	}
	if _, err := s.Get(ctx, "b", "shared", []string{"x"}, false); !errors.Is(err, memory.ErrNotFound) {
		t.Errorf("tenant b Get = %v, want ErrNotFound", err)
	}
	// Same name in tenant b is a different namespace.
	mustCreate(t, s, "b", memory.Namespace{Name: "shared", Dimension: 2})
	hits, err := s.Search(ctx, "b", "shared", memory.Query{Vector: []float32{1, 0}, TopK: 5, Text: "secret", Hybrid: true})
	if err != nil || len(hits) != 0 {
		t.Errorf("tenant b Search = %v, %v; want no hits", ids(hits), err)
	}
	if n, err := s.Delete(ctx, "b", "shared", []string{"x"}, nil); err != nil || n != 0 {
		t.Errorf("tenant b Delete = %d, %v; want 0", n, err)
	}
	if err := s.DeleteNamespace(ctx, "b", "shared"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "a", "shared", []string{"x"}, false); err != nil || len(got) != 1 {
		t.Errorf("tenant a Get after tenant b's deletes = %d records, %v; want 1", len(got), err)
	}
}

// brute returns the exact top k (id, score) for q under metric over recs accepted by keep.
func brute(metric memory.Metric, recs []memory.Record, q []float32, k int, keep func(memory.Record) bool) []memory.Hit {
	var out []memory.Hit
	for _, r := range recs {
		if keep != nil && !keep(r) {
			continue
		}
		var d, nq, nr float64
		for i := range q {
			switch metric {
			case memory.MetricL2:
				x := float64(q[i] - r.Vector[i])
				d += x * x
			default:
				d += float64(q[i]) * float64(r.Vector[i])
			}
			nq += float64(q[i]) * float64(q[i])
			nr += float64(r.Vector[i]) * float64(r.Vector[i])
		}
		var sc float64
		switch metric {
		case memory.MetricCosine:
			sc = d / math.Sqrt(nq*nr)
		case memory.MetricDotProduct:
			sc = d
		case memory.MetricL2:
			sc = -math.Sqrt(d)
		}
		out = append(out, memory.Hit{Record: r, Score: float32(sc)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Score > out[j].Score })
	return out[:min(k, len(out))]
}

func dataset(seed uint64, n, dim int) []memory.Record {
	r := rand.New(rand.NewPCG(seed, 1))
	recs := make([]memory.Record, n)
	for i := range recs {
		recs[i] = memory.Record{
			ID:     fmt.Sprintf("r%04d", i),
			Text:   fmt.Sprintf("record number %d", i),
			Vector: randVec(r, dim),
			Metadata: map[string]memory.Value{
				"n":    num(float64(i)),
				"mod":  num(float64(i % 10)),
				"rare": boolean(i%41 == 0),
			},
		}
	}
	return recs
}

func checkHits(t *testing.T, what string, got, want []memory.Hit) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d hits %v, want %d %v", what, len(got), ids(got), len(want), ids(want))
	}
	for i := range want {
		if math.Abs(float64(got[i].Score-want[i].Score)) > 1e-3*max(1, math.Abs(float64(want[i].Score))) {
			t.Errorf("%s: hit %d = %s %.5f, want %s %.5f", what, i, got[i].Record.ID, got[i].Score, want[i].Record.ID, want[i].Score)
			continue
		}
		// Equal scores may come in either order; compare ids only where the score is not tied.
		if got[i].Record.ID != want[i].Record.ID && math.Abs(float64(got[i].Score-want[i].Score)) > 1e-6 {
			t.Errorf("%s: hit %d = %s, want %s", what, i, got[i].Record.ID, want[i].Record.ID)
		}
	}
}

func testExactSearch(t *testing.T, s memory.Store) {
	const dim = 16
	recs := dataset(1, 300, dim)
	q := randVec(rand.New(rand.NewPCG(99, 2)), dim)
	for _, m := range []memory.Metric{memory.MetricCosine, memory.MetricDotProduct, memory.MetricL2} {
		name := fmt.Sprintf("m%d", m)
		mustCreate(t, s, "t1", memory.Namespace{Name: name, Dimension: dim, Metric: m, IndexKind: memory.IndexExact})
		mustUpsert(t, s, "t1", name, recs)
		for _, k := range []int{1, 10, 300, 1000} {
			got, err := s.Search(ctx, "t1", name, memory.Query{Vector: q, TopK: k})
			if err != nil {
				t.Fatalf("Search: %v", err)
			}
			checkHits(t, fmt.Sprintf("metric %d k %d", m, k), got, brute(m, recs, q, k, nil))
		}
	}
	if _, err := s.Search(ctx, "t1", "m1", memory.Query{Vector: make([]float32, dim-1), TopK: 1}); !errors.Is(err, memory.ErrInvalidArgument) {
		t.Errorf("Search(wrong dimension) = %v, want ErrInvalidArgument", err)
	}
}

func testDefaultIndexRecall(t *testing.T, s memory.Store) {
	const dim = 32
	recs := dataset(2, 1000, dim)
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: dim})
	mustUpsert(t, s, "t1", "ns", recs)
	r := rand.New(rand.NewPCG(3, 3))
	found, total := 0, 0
	for range 10 {
		q := randVec(r, dim)
		got, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: q, TopK: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 10 {
			t.Fatalf("got %d hits, want 10", len(got))
		}
		want := ids(brute(memory.MetricCosine, recs, q, 10, nil))
		for _, h := range got {
			if slices.Contains(want, h.Record.ID) {
				found++
			}
		}
		total += 10
	}
	if recall := float64(found) / float64(total); recall < 0.9 {
		t.Errorf("recall@10 with the default index = %.2f, want >= 0.9", recall)
	}
}

func num(f float64) memory.Value            { return memory.NumberValue(f) }
func str(s string) memory.Value             { return memory.StringValue(s) }
func boolean(b bool) memory.Value           { return memory.BoolValue(b) }
func list(ss ...memory.Scalar) memory.Value { return memory.ListValue(ss...) }
func sS(s string) memory.Scalar             { return memory.String(s) }
func sN(f float64) memory.Scalar            { return memory.Number(f) }
func sB(b bool) memory.Scalar               { return memory.Bool(b) }

var (
	eq     = memory.Eq
	ne     = memory.Ne
	in     = memory.In
	rng    = memory.InRange
	exists = memory.Exists
	all    = memory.All
	anyOf  = memory.Any
	not    = memory.Not
)

func fp(f float64) *float64 { return &f }

func testFilters(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "f", Dimension: 2})
	v := []float32{1, 1}
	mustUpsert(t, s, "t1", "f", []memory.Record{
		{ID: "a", Vector: v, Metadata: map[string]memory.Value{"color": str("red"), "size": num(1), "ok": boolean(true)}},
		{ID: "b", Vector: v, Metadata: map[string]memory.Value{"color": str("blue"), "size": num(2.5), "ok": boolean(false)}},
		{ID: "c", Vector: v, Metadata: map[string]memory.Value{"color": str("red"), "size": str("2"), "tags": list(sS("x"), sS("y"))}},
		{ID: "d", Vector: v, Metadata: map[string]memory.Value{"tags": list(sS("y"), sN(7)), "size": num(10)}},
		{ID: "e", Vector: v},
	})
	tests := []struct {
		name   string
		filter *memory.Filter
		want   []string
	}{
		{"eq string", eq("color", sS("red")), []string{"a", "c"}},
		{"eq number", eq("size", sN(2.5)), []string{"b"}},
		{"eq number vs string is false", eq("size", sN(2)), nil},
		{"eq string vs number is false", eq("size", sS("1")), nil},
		{"eq bool", eq("ok", sB(false)), []string{"b"}},
		{"eq list contains", eq("tags", sS("y")), []string{"c", "d"}},
		{"eq list contains number", eq("tags", sN(7)), []string{"d"}},
		{"ne matches missing", ne("color", sS("red")), []string{"b", "d", "e"}},
		{"ne list", ne("tags", sS("x")), []string{"a", "b", "d", "e"}},
		{"in", in("color", sS("blue"), sS("green")), []string{"b"}},
		{"in list", in("tags", sS("x"), sS("nope")), []string{"c"}},
		{"range gt", rng("size", memory.Range{Gt: fp(1)}), []string{"b", "d"}},
		{"range gte lte", rng("size", memory.Range{Gte: fp(1), Lte: fp(2.5)}), []string{"a", "b"}},
		{"range lt", rng("size", memory.Range{Lt: fp(2.5)}), []string{"a"}},
		{"range list element", rng("tags", memory.Range{Gt: fp(5)}), []string{"d"}},
		{"exists", exists("tags", true), []string{"c", "d"}},
		{"not exists", exists("color", false), []string{"d", "e"}},
		{"all", all(eq("color", sS("red")), exists("ok", true)), []string{"a"}},
		{"any", anyOf(eq("color", sS("blue")), eq("tags", sN(7))), []string{"b", "d"}},
		{"not", not(eq("color", sS("red"))), []string{"b", "d", "e"}},
		{"nested", all(not(exists("ok", true)), anyOf(eq("tags", sS("x")), rng("size", memory.Range{Gte: fp(10)}))), []string{"c", "d"}},
	}
	for _, tc := range tests {
		hits, err := s.Search(ctx, "t1", "f", memory.Query{Vector: v, TopK: 10, Filter: tc.filter})
		if err != nil {
			t.Errorf("%s: Search: %v", tc.name, err)
			continue
		}
		got := ids(hits)
		slices.Sort(got)
		if !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	if _, err := s.Search(ctx, "t1", "f", memory.Query{Vector: v, TopK: 1, Filter: rng("size", memory.Range{})}); !errors.Is(err, memory.ErrInvalidArgument) {
		t.Errorf("Search(empty range) = %v, want ErrInvalidArgument", err)
	}
}

func testSelectiveFilter(t *testing.T, s memory.Store) {
	const dim = 32
	recs := dataset(4, 2000, dim)
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: dim})
	for i := 0; i < len(recs); i += 500 {
		mustUpsert(t, s, "t1", "ns", recs[i:i+500])
	}
	q := randVec(rand.New(rand.NewPCG(5, 5)), dim)
	filters := map[string]*memory.Filter{
		"rare (49 match)":     eq("rare", sB(true)),
		"n < 12 (12 match)":   rng("n", memory.Range{Lt: fp(12)}),
		"n in 3 (3 match)":    in("n", sN(5), sN(500), sN(1999)),
		"mod 3 (200 match)":   eq("mod", sN(3)),
		"not mod (1800)":      not(in("mod", sN(1), sN(2))),
		"rare and mod (5 m.)": all(eq("rare", sB(true)), eq("mod", sN(0))),
	}
	for name, f := range filters {
		for _, k := range []int{10, 100} {
			got, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: q, TopK: k, Filter: f})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			want := brute(memory.MetricCosine, recs, q, k, func(r memory.Record) bool { return memory.MatchFilter(f, r.Metadata) })
			if len(got) != len(want) {
				t.Errorf("%s k=%d: %d hits, want %d", name, k, len(got), len(want))
			}
			for _, h := range got {
				if !memory.MatchFilter(f, h.Record.Metadata) {
					t.Errorf("%s: hit %s does not match the filter", name, h.Record.ID)
				}
			}
		}
	}
}

func testMinScore(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 2})
	mustUpsert(t, s, "t1", "ns", []memory.Record{
		{ID: "same", Vector: []float32{1, 0}},
		{ID: "close", Vector: []float32{1, 0.2}},
		{ID: "orth", Vector: []float32{0, 1}},
		{ID: "opp", Vector: []float32{-1, 0}},
	})
	ms := float32(0.5)
	got, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: []float32{2, 0}, TopK: 10, MinScore: &ms})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"same", "close"}; !slices.Equal(ids(got), want) {
		t.Errorf("MinScore 0.5: %v, want %v", ids(got), want)
	}
	if len(got) > 0 && math.Abs(float64(got[0].Score-1)) > 1e-5 {
		t.Errorf("cosine of parallel vectors = %v, want 1", got[0].Score)
	}
}

func testGet(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 3})
	upd := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	in := []memory.Record{
		{ID: "a", Text: "alpha", Vector: []float32{0.1, 0.2, 0.3}, Metadata: map[string]memory.Value{"k": list(sS("x"), sN(1.5), sB(true))}, UpdateTime: upd},
		{ID: "b/c:d@e.f-g_h", Text: "beta", Vector: []float32{-1e-30, 3.4e38, 1}, UpdateTime: upd},
	}
	mustUpsert(t, s, "t1", "ns", in)
	got, err := s.Get(ctx, "t1", "ns", []string{"b/c:d@e.f-g_h", "missing", "a"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "b/c:d@e.f-g_h" || got[1].ID != "a" {
		t.Fatalf("Get order = %v", got)
	}
	for i, want := range []memory.Record{in[1], in[0]} {
		g := got[i]
		if g.Text != want.Text || !slices.Equal(g.Vector, want.Vector) || !g.UpdateTime.Equal(want.UpdateTime) || len(g.Metadata) != len(want.Metadata) {
			t.Errorf("Get(%s) = %+v, want %+v", want.ID, g, want)
		}
	}
	if l := got[1].Metadata["k"].List; len(l) != 3 || l[0].Str != "x" || l[1].Num != 1.5 || !l[2].Bool {
		t.Errorf("list metadata round trip = %v", l)
	}
	noVec, _ := s.Get(ctx, "t1", "ns", []string{"a"}, false)
	if len(noVec) != 1 || noVec[0].Vector != nil {
		t.Errorf("Get without vectors = %+v", noVec)
	}
}

func testDelete(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 8})
	recs := dataset(6, 100, 8)
	mustUpsert(t, s, "t1", "ns", recs)
	n, err := s.Delete(ctx, "t1", "ns", []string{"r0001", "r0002", "nope", "r0001"}, nil)
	if err != nil || n != 2 {
		t.Fatalf("Delete(ids) = %d, %v; want 2", n, err)
	}
	n, err = s.Delete(ctx, "t1", "ns", nil, eq("mod", sN(5)))
	if err != nil || n != 10 {
		t.Fatalf("Delete(filter) = %d, %v; want 10", n, err)
	}
	if c := count(t, s, "t1", "ns"); c != 88 {
		t.Errorf("count = %d, want 88", c)
	}
	hits, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: recs[0].Vector, TopK: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hits {
		if h.Record.ID == "r0001" || h.Record.ID == "r0002" || h.Record.Metadata["mod"].Num == 5 {
			t.Errorf("deleted record %s returned", h.Record.ID)
		}
	}
	if len(hits) != 88 {
		t.Errorf("Search after delete: %d hits, want 88", len(hits))
	}
	// Deleted slots are reused correctly: the remaining records still score exactly.
	remaining := slices.DeleteFunc(slices.Clone(recs), func(r memory.Record) bool {
		return r.ID == "r0001" || r.ID == "r0002" || r.Metadata["mod"].Num == 5
	})
	checkHits(t, "after delete", hits[:10], brute(memory.MetricCosine, remaining, recs[0].Vector, 10, nil))
}

func testTTL(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 2})
	now := time.Now()
	mustUpsert(t, s, "t1", "ns", []memory.Record{
		{ID: "past", Text: "gone", Vector: []float32{1, 0}, ExpireTime: now.Add(-time.Second)},
		{ID: "future", Text: "gone later", Vector: []float32{1, 0.1}, ExpireTime: now.Add(time.Hour)},
		{ID: "forever", Text: "here", Vector: []float32{0, 1}},
	})
	hits, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: []float32{1, 0}, TopK: 10, Text: "gone", Hybrid: true})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids(hits), "past") || len(hits) != 2 {
		t.Errorf("hybrid Search = %v, want future and forever", ids(hits))
	}
	hits, _ = s.Search(ctx, "t1", "ns", memory.Query{Vector: []float32{1, 0}, TopK: 10})
	if got := ids(hits); !slices.Equal(got, []string{"future", "forever"}) {
		t.Errorf("Search = %v, want [future forever]", got)
	}
	got, _ := s.Get(ctx, "t1", "ns", []string{"past", "future"}, false)
	if len(got) != 1 || got[0].ID != "future" || !got[0].ExpireTime.Equal(now.Add(time.Hour).Truncate(time.Microsecond)) && !got[0].ExpireTime.Equal(now.Add(time.Hour)) {
		t.Errorf("Get = %+v, want only future with its expire time", got)
	}
	if c := count(t, s, "t1", "ns"); c != 2 {
		t.Errorf("count = %d, want 2", c)
	}
	if n, _ := s.Delete(ctx, "t1", "ns", []string{"past"}, nil); n != 0 {
		t.Errorf("Delete(expired) = %d, want 0", n)
	}
	// Overwriting an expired record revives it.
	mustUpsert(t, s, "t1", "ns", []memory.Record{{ID: "past", Vector: []float32{1, 0}}})
	if c := count(t, s, "t1", "ns"); c != 3 {
		t.Errorf("count after revive = %d, want 3", c)
	}
}

func testIdempotentUpsert(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 4})
	recs := dataset(7, 50, 4)
	mustUpsert(t, s, "t1", "ns", recs)
	mustUpsert(t, s, "t1", "ns", recs)
	if c := count(t, s, "t1", "ns"); c != 50 {
		t.Errorf("count after repeated upsert = %d, want 50", c)
	}
	// Overwrite one, and a batch repeating an id keeps the last.
	mustUpsert(t, s, "t1", "ns", []memory.Record{
		{ID: "r0003", Text: "first", Vector: []float32{1, 2, 3, 4}},
		{ID: "r0003", Text: "second", Vector: []float32{4, 3, 2, 1}},
	})
	got, err := s.Get(ctx, "t1", "ns", []string{"r0003"}, true)
	if err != nil || len(got) != 1 || got[0].Text != "second" || !slices.Equal(got[0].Vector, []float32{4, 3, 2, 1}) || len(got[0].Metadata) != 0 {
		t.Errorf("Get after overwrite = %+v, %v", got, err)
	}
	if c := count(t, s, "t1", "ns"); c != 50 {
		t.Errorf("count after overwrite = %d, want 50", c)
	}
	hits, _ := s.Search(ctx, "t1", "ns", memory.Query{Vector: []float32{4, 3, 2, 1}, TopK: 1})
	if len(hits) != 1 || hits[0].Record.ID != "r0003" {
		t.Errorf("Search for overwritten vector = %v", ids(hits))
	}
}

func testRejectedBatch(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 3})
	good := memory.Record{ID: "good", Vector: []float32{1, 2, 3}}
	bad := map[string]memory.Record{
		"dimension": {ID: "bad", Vector: []float32{1, 2}},
		"nan":       {ID: "bad", Vector: []float32{1, float32(math.NaN()), 3}},
		"inf":       {ID: "bad", Vector: []float32{1, float32(math.Inf(1)), 3}},
		"zero":      {ID: "bad", Vector: []float32{0, 0, 0}},
		"no id":     {Vector: []float32{1, 2, 3}},
		"metadata":  {ID: "bad", Vector: []float32{1, 2, 3}, Metadata: map[string]memory.Value{"x": num(math.NaN())}},
	}
	for name, b := range bad {
		err := s.Upsert(ctx, "t1", "ns", []memory.Record{good, b})
		if !errors.Is(err, memory.ErrInvalidArgument) {
			t.Errorf("%s: Upsert = %v, want ErrInvalidArgument", name, err)
		}
	}
	if got, _ := s.Get(ctx, "t1", "ns", []string{"good", "bad"}, false); len(got) != 0 {
		t.Errorf("rejected batches wrote %d records", len(got))
	}
	if c := count(t, s, "t1", "ns"); c != 0 {
		t.Errorf("count = %d, want 0", c)
	}
}

func testHybrid(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: 2})
	mustUpsert(t, s, "t1", "ns", []memory.Record{
		{ID: "vec", Text: "nothing relevant here", Vector: []float32{1, 0}},
		{ID: "txt", Text: "the zebra crossing", Vector: []float32{-1, 0.1}},
		{ID: "both", Text: "zebra stripes", Vector: []float32{1, 0.3}},
		{ID: "none", Text: "unrelated words", Vector: []float32{-1, -0.1}},
	})
	hits, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: []float32{1, 0}, Text: "Zebra", Hybrid: true, TopK: 4})
	if err != nil {
		t.Fatal(err)
	}
	got := ids(hits)
	if len(got) != 4 || got[0] != "both" {
		t.Fatalf("hybrid = %v, want both first and 4 hits", got)
	}
	// both: vector rank 2, text rank <= 2; a record in both lists outranks one in only one.
	if idx := slices.Index(got, "txt"); idx > 2 || slices.Index(got, "none") != 3 {
		t.Errorf("hybrid order = %v; want txt within the first three, none last", got)
	}
	want := float32(1.0/(memory.RRFK+2)) + float32(1.0/(memory.RRFK+1))
	if h := hits[0]; math.Abs(float64(h.Score-want)) > 1e-3 && math.Abs(float64(h.Score-2*float32(1.0/(memory.RRFK+2)))) > 1e-3 {
		t.Errorf("fused score = %v, want about %v", h.Score, want)
	}
	hits, _ = s.Search(ctx, "t1", "ns", memory.Query{Vector: []float32{1, 0}, Text: "zebra", Hybrid: true, TopK: 2, Filter: ne("x", sS("y"))})
	if len(hits) != 2 {
		t.Errorf("hybrid top_k 2 = %v", ids(hits))
	}
}

func testConcurrent(t *testing.T, s memory.Store) {
	const dim, writers, batches, per = 8, 4, 10, 20
	mustCreate(t, s, "t1", memory.Namespace{Name: "ns", Dimension: dim})
	var wg sync.WaitGroup
	errs := make(chan error, writers*batches+100)
	for w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for b := range batches {
				recs := make([]memory.Record, per)
				for i := range recs {
					recs[i] = memory.Record{ID: fmt.Sprintf("w%d-%d-%d", w, b, i), Text: "concurrent", Vector: randVec(r, dim), Metadata: map[string]memory.Value{"w": num(float64(w))}}
				}
				if err := s.Upsert(ctx, "t1", "ns", recs); err != nil {
					errs <- err
				}
			}
		})
	}
	for rd := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(rd), 10))
			for range 20 {
				hits, err := s.Search(ctx, "t1", "ns", memory.Query{Vector: randVec(r, dim), TopK: 5, Filter: eq("w", sN(1))})
				if err != nil {
					errs <- err
					return
				}
				for _, h := range hits {
					if h.Record.Metadata["w"].Num != 1 {
						errs <- fmt.Errorf("hit %s breaks the filter", h.Record.ID)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c := count(t, s, "t1", "ns"); c != writers*batches*per {
		t.Errorf("count = %d, want %d", c, writers*batches*per)
	}
}
