package localstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/loom-dev/loom/memory"
)

// ivfStore opens a store in dir holding a default-kind namespace of IVFMinRows+200 clustered vectors.
func ivfStore(t *testing.T, dir string, r *rand.Rand) (*Store, func() []float32) {
	t.Helper()
	const dim = 32
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	centroids, vec := clusters(r, dim, 30)
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: dim, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	for start := 0; start < IVFMinRows+200; start += memory.MaxBatch {
		var recs []memory.Record
		for i := start; i < min(start+memory.MaxBatch, IVFMinRows+200); i++ {
			recs = append(recs, memory.Record{ID: fmt.Sprint(i), Vector: vec(centroids[r.IntN(len(centroids))])})
		}
		if err := s.Upsert(ctx, "t", "ns", recs); err != nil {
			t.Fatal(err)
		}
	}
	return s, func() []float32 { return vec(centroids[r.IntN(len(centroids))]) }
}

// TestIndexPersisted checks that a built index is saved and attached again on Open without a rebuild, also
// when writes followed the save, and that a corrupt or stale index file is refused (removed, searches still
// answered) rather than used.
func TestIndexPersisted(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(11, 12))
	s, vec := ivfStore(t, dir, r)
	if err := s.BuildIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	want := s.tenants["t"]["ns"].ivf.Load()
	if want == nil {
		t.Fatal("no index after BuildIndexes")
	}
	// Writes after the save: the replay maintains the attached index through them.
	if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: "late", Vector: vec()}, {ID: "1", Vector: vec()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "t", "ns", []string{"2", "3"}, nil); err != nil {
		t.Fatal(err)
	}
	wantWhere := slices.Clone(want.where)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	reopen := func() *Store {
		t.Helper()
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s = reopen()
	ns := s.tenants["t"]["ns"]
	got := ns.ivf.Load()
	if got == nil {
		t.Fatal("index not attached on Open")
	}
	if !slices.Equal(got.where, wantWhere) || !slices.Equal(got.centroids, want.centroids) {
		t.Fatal("attached index differs from the one built")
	}
	if hits, err := s.Search(ctx, "t", "ns", memory.Query{Vector: vec(), TopK: 10}); err != nil || len(hits) != 10 {
		t.Fatalf("search: %d hits, %v", len(hits), err)
	}
	s.Close()

	// A corrupt file: refused and removed; the store opens and answers by the scan.
	files, _ := filepath.Glob(filepath.Join(dir, "index", "*.ivf"))
	if len(files) != 1 {
		t.Fatalf("index files %v, want one", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(files[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	if s.tenants["t"]["ns"].ivf.Load() != nil {
		t.Fatal("corrupt index attached")
	}
	if _, err := os.Stat(files[0]); !os.IsNotExist(err) {
		t.Fatalf("corrupt index file kept: %v", err)
	}
	if hits, err := s.Search(ctx, "t", "ns", memory.Query{Vector: vec(), TopK: 10}); err != nil || len(hits) != 10 {
		t.Fatalf("search without index: %d hits, %v", len(hits), err)
	}
	// That search started a rebuild, which saves again. Compaction rewrites the log: the index is saved again
	// against the new log (no record was dropped, so the slots replay the same) and attached on the next Open.
	s.waitIndexes()
	if _, err := os.Stat(files[0]); err != nil {
		t.Fatalf("rebuilt index not saved: %v", err)
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = reopen()
	if s.tenants["t"]["ns"].ivf.Load() == nil {
		t.Fatal("index not attached after compaction and Open")
	}
	// An expired record dropped by compaction shifts the slots: the index file is removed, not saved.
	if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: "brief", Vector: vec(), ExpireTime: time.Now().Add(50 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(files[0]); !os.IsNotExist(err) {
		t.Fatalf("index file kept after a compaction that dropped a record: %v", err)
	}
	// DeleteNamespace removes the namespace's saved index (built again after a restart).
	s.Close()
	s = reopen()
	if err := s.BuildIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(files[0]); err != nil {
		t.Fatalf("index not saved again: %v", err)
	}
	if err := s.DeleteNamespace(ctx, "t", "ns"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(files[0]); !os.IsNotExist(err) {
		t.Fatalf("index file kept after DeleteNamespace: %v", err)
	}
}

// FuzzDecodeIndex checks the index file decoder never panics, refuses what is not a well-formed file, and
// that what it accepts re-encodes to the same bytes.
func FuzzDecodeIndex(f *testing.F) {
	x := &ivf{nlist: 2, centroids: []float32{1, 0, 0, 1}, builtAt: 3}
	x.fileAll([]int32{0, 1, 1})
	valid := encodeIndex(&savedIndex{tenant: "t", namespace: "ns", offset: 99, frameCRC: 7, rows: 3, dim: 2, x: x})
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add([]byte(indexMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		si, err := decodeIndex(b)
		if err != nil {
			return
		}
		if len(si.x.where) != si.rows || len(si.x.centroids) != si.x.nlist*si.dim {
			t.Fatalf("accepted inconsistent index: %d rows, %d where", si.rows, len(si.x.where))
		}
		if got := encodeIndex(si); string(got) != string(b) {
			t.Fatal("accepted index does not re-encode to the same bytes")
		}
	})
}
