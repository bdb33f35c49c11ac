package pgstore

import (
	"context"
	"testing"

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
	row, err := s.cachedLookup(ctx, s.pool, "t", "ns")
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
