package pgstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/memorytest"
)

func TestMain(m *testing.M) { sqldbtest.Main(m) }

// openReplicated opens a store over a fresh database with a read replica.
func openReplicated(t *testing.T) (*Store, *sqldb.DB) {
	t.Helper()
	primaryURL := sqldbtest.PostgresURL(t)
	readURL := sqldbtest.SharedReplica(t).URL(t, primaryURL)
	db, err := sqldb.Open(context.Background(), primaryURL, sqldb.Options{ReadURL: readURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, db
}

// TestContractWithReplica runs the contract suite on a store whose reads may go to a replica: the suite's calls
// carry no principal, so they are one (anonymous) caller, who must always read its own writes.
func TestContractWithReplica(t *testing.T) {
	memorytest.Run(t, func(t *testing.T) memory.Store {
		s, _ := openReplicated(t)
		return s
	})
}

// TestReplicaReadYourWrites: a caller reads its upserts back at once through Get and Search, every time; another
// caller's reads are served by the replica.
func TestReplicaReadYourWrites(t *testing.T) {
	s, db := openReplicated(t)
	writer := principal.NewContext(context.Background(), principal.Principal{Tenant: "acme", Subject: "writer"})
	other := principal.NewContext(context.Background(), principal.Principal{Tenant: "acme", Subject: "reader"})
	if _, err := s.CreateNamespace(writer, "acme", memory.Namespace{Name: "ns", Dimension: 3, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetNamespace(writer, "acme", "ns", false); err != nil {
		t.Fatalf("the creator's GetNamespace: %v", err)
	}
	const n = 200
	for i := range n {
		id := fmt.Sprintf("r%d", i)
		if err := s.Upsert(writer, "acme", "ns", []memory.Record{{ID: id, Vector: []float32{1, float32(i), 0}, Text: id, UpdateTime: time.Now()}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(writer, "acme", "ns", []string{id}, false)
		if err != nil || len(got) != 1 {
			t.Fatalf("iteration %d: Get = %v, %v", i, got, err)
		}
		hits, err := s.Search(writer, "acme", "ns", memory.Query{Vector: []float32{1, float32(i), 0}, TopK: i + 1})
		if err != nil || len(hits) != i+1 {
			t.Fatalf("iteration %d: Search found %d of %d records: %v", i, len(hits), i+1, err)
		}
		if _, err := s.ListNamespaces(other, "acme", "", 10); err != nil {
			t.Fatal(err)
		}
	}
	reg := sqldbtest.ReadCounts(t, db)
	if reg["replica/ok"] < n {
		t.Errorf("reads = %v, want the other caller's %d on the replica", reg, n)
	}
	t.Logf("reads: %v", reg)

	// The other caller sees everything once the replica has replayed it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := s.Get(other, "acme", "ns", []string{fmt.Sprintf("r%d", n-1)}, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica never served the last record")
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.DeleteNamespace(writer, "acme", "ns"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetNamespace(writer, "acme", "ns", false); err == nil {
		t.Fatal("the deleter still sees its namespace")
	}
}
