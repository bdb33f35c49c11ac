package pgstore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/memorytest"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := New(context.Background(), sqldbtest.Open(t, sqldb.Postgres))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestContract runs the suite twice: as namespaces are before their deferred HNSW index is built (exact
// scans), and with the index built by the first write (HNSW scans, iterative filtering, exact fallback).
func TestContract(t *testing.T) {
	t.Run("Deferred", func(t *testing.T) {
		memorytest.Run(t, func(t *testing.T) memory.Store { return open(t) })
	})
	t.Run("Indexed", func(t *testing.T) {
		memorytest.Run(t, func(t *testing.T) memory.Store {
			s := open(t)
			s.indexNow = true
			return s
		})
	})
}

// TestDeferredIndex checks that BuildIndexes builds a pending index and that searches then use it.
func TestDeferredIndex(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 3, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: "a", Vector: []float32{1, 0, 0}}, {ID: "b", Vector: []float32{0, 1, 0}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.BuildIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	row, err := s.cachedLookup(ctx, "t", "ns")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.indexed.Load(row.id); !ok {
		t.Fatal("index not marked built")
	}
	var valid bool
	if err := s.pool.QueryRow(ctx, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", s.db.Table(row.indexName())).Scan(&valid); err != nil || !valid {
		t.Fatalf("index valid = %v, %v", valid, err)
	}
	hits, err := s.Search(ctx, "t", "ns", memory.Query{Vector: []float32{1, 0.1, 0}, TopK: 1})
	if err != nil || len(hits) != 1 || hits[0].Record.ID != "a" {
		t.Fatalf("search = %v, %v", hits, err)
	}
}

func TestQuotaContract(t *testing.T) {
	memorytest.RunQuota(t, func(t *testing.T, q memory.Quota) memory.Store {
		s, err := New(context.Background(), sqldbtest.Open(t, sqldb.Postgres), WithQuota(q))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestUsageCounters checks that each namespace's usage counters match a scan of its records after writes,
// overwrites, deletes and a removal of expired records, and that migration 00002's backfill computes the same.
func TestUsageCounters(t *testing.T) {
	ctx := context.Background()
	s, err := New(ctx, sqldbtest.Open(t, sqldb.Postgres), WithQuota(memory.Quota{Records: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 3, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	var recs []memory.Record
	for i := range 300 { // past the COPY threshold
		recs = append(recs, memory.Record{ID: fmt.Sprint("r", i), Text: strings.Repeat("x", i), Vector: []float32{1, float32(i), 0},
			Metadata: map[string]memory.Value{"i": memory.NumberValue(float64(i))}})
	}
	recs[0].ExpireTime = time.Now().Add(-time.Hour)
	if err := s.Upsert(ctx, "t", "ns", recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: "r1", Text: "short", Vector: []float32{1, 1, 1}}, {ID: "new", Vector: []float32{0, 1, 0}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "t", "ns", []string{"r2", "r3", "missing"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.purgeExpired(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	row, err := s.lookup(ctx, s.pool, "t", "ns")
	if err != nil {
		t.Fatal(err)
	}
	scan := func() (n, b int64) {
		t.Helper()
		if err := s.pool.QueryRow(ctx, "SELECT count(*), coalesce(sum("+recordSize+"), 0) FROM "+s.records(row)+" t").Scan(&n, &b); err != nil {
			t.Fatal(err)
		}
		return n, b
	}
	counters := func() (n, b int64) {
		t.Helper()
		if err := s.pool.QueryRow(ctx, "SELECT record_count, size_bytes FROM "+s.ns+" WHERE id = $1", row.id).Scan(&n, &b); err != nil {
			t.Fatal(err)
		}
		return n, b
	}
	wn, wb := scan()
	if n, b := counters(); n != wn || b != wb || n != 298 {
		t.Fatalf("counters = %d records, %d bytes; scan = %d, %d; want 298 records", n, b, wn, wb)
	}
	u, err := s.Usage(ctx, "t")
	if err != nil || u != (memory.Usage{Namespaces: 1, Records: wn, Bytes: wb}) {
		t.Fatalf("Usage = %+v, %v", u, err)
	}
	// The migration's backfill, run again over zeroed counters, computes the same.
	up, err := migrationFiles.ReadFile("migrations/00002_usage.sql")
	if err != nil {
		t.Fatal(err)
	}
	_, block, _ := strings.Cut(string(up), "-- +goose StatementBegin\n")
	block, _, _ = strings.Cut(block, "-- +goose StatementEnd")
	if _, err := s.pool.Exec(ctx, "UPDATE "+s.ns+" SET record_count = 0, size_bytes = 0"); err != nil {
		t.Fatal(err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	schema, _, _ := strings.Cut(s.ns, ".")
	if _, err := conn.Exec(ctx, "SET search_path TO "+schema+", public"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, block); err != nil {
		t.Fatalf("backfill: %v", err)
	}
	if _, err := conn.Exec(ctx, "RESET search_path"); err != nil {
		t.Fatal(err)
	}
	if n, b := counters(); n != wn || b != wb {
		t.Fatalf("backfilled counters = %d, %d; want %d, %d", n, b, wn, wb)
	}
}
