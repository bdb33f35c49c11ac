package localstore

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/memorytest"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestContract(t *testing.T) {
	memorytest.Run(t, func(t *testing.T) memory.Store { return open(t, t.TempDir()) })
}

func TestContractAfterReopen(t *testing.T) {
	// Every contract test runs against a store whose writes are replayed from its log on each call of Get, by
	// reopening... too costly per call; instead check a replayed store matches the original on a workload.
	dir := t.TempDir()
	s := open(t, dir)
	ctx := context.Background()
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 2, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 50 {
		id := string(rune('a'+i%26)) + string(rune('a'+i/26))
		want = append(want, id)
		if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: id, Text: "t " + id, Vector: []float32{1, float32(i)}, Metadata: map[string]memory.Value{"i": memory.NumberValue(float64(i))}}}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Delete(ctx, "t", "ns", nil, memory.InRange("i", memory.Range{Lt: ptr(10.0)})); err != nil || n != 10 {
		t.Fatalf("Delete = %d, %v", n, err)
	}
	want = want[10:]
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "gone", Dimension: 2, Metric: memory.MetricCosine}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNamespace(ctx, "t", "gone"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	check := func(s *Store) {
		t.Helper()
		got, err := s.Get(ctx, "t", "ns", append(slices.Clone(want), "aa", "ba"), true)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range got {
			ids = append(ids, r.ID)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("after reopen: ids %v, want %v", ids, want)
		}
		if _, err := s.GetNamespace(ctx, "t", "gone", false); err == nil {
			t.Errorf("deleted namespace came back")
		}
	}
	s2 := open(t, dir)
	check(s2)
	if err := s2.Compact(); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	s3 := open(t, dir)
	check(s3)
}

func ptr[T any](v T) *T { return &v }

// TestTornTail writes acknowledged batches, then simulates a crash in the middle of the next write (a truncated
// frame, and zeroed space), and checks every acknowledged record survives and the store keeps working.
func TestTornTail(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		tear func(t *testing.T, path string, good int64)
	}{
		{"truncated frame", func(t *testing.T, path string, good int64) {
			st, _ := os.Stat(path)
			if err := os.Truncate(path, good+(st.Size()-good)/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"short header", func(t *testing.T, path string, good int64) {
			if err := os.Truncate(path, good+3); err != nil {
				t.Fatal(err)
			}
		}},
		{"zeroed tail", func(t *testing.T, path string, good int64) {
			st, _ := os.Stat(path)
			f, _ := os.OpenFile(path, os.O_WRONLY, 0)
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, st.Size()-good), good); err != nil {
				t.Fatal(err)
			}
		}},
		{"bad checksum at end", func(t *testing.T, path string, good int64) {
			st, _ := os.Stat(path)
			f, _ := os.OpenFile(path, os.O_WRONLY, 0)
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xff}, st.Size()-1); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 3, Metric: memory.MetricL2}); err != nil {
				t.Fatal(err)
			}
			if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: "a", Vector: []float32{1, 2, 3}}, {ID: "b", Vector: []float32{4, 5, 6}}}); err != nil {
				t.Fatal(err)
			}
			good := s.logSize
			if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: "c", Vector: []float32{7, 8, 9}}, {ID: "d", Vector: []float32{1, 1, 1}}}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			path := filepath.Join(dir, "memory.log")
			tc.tear(t, path, good)

			s2 := open(t, dir)
			got, err := s2.Get(ctx, "t", "ns", []string{"a", "b", "c", "d"}, true)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0].ID != "a" || got[1].ID != "b" || !slices.Equal(got[1].Vector, []float32{4, 5, 6}) {
				t.Fatalf("after torn tail: %+v, want a and b only", got)
			}
			if st, _ := os.Stat(path); st.Size() != good {
				t.Errorf("log size %d after open, want truncated to %d", st.Size(), good)
			}
			// The store keeps appending after the cut.
			if err := s2.Upsert(ctx, "t", "ns", []memory.Record{{ID: "e", Vector: []float32{0, 0, 1}}}); err != nil {
				t.Fatal(err)
			}
			s2.Close()
			s3 := open(t, dir)
			if got, _ := s3.Get(ctx, "t", "ns", []string{"a", "b", "e"}, false); len(got) != 3 {
				t.Errorf("after append and reopen: %d records, want 3", len(got))
			}
		})
	}
}

// TestCorruptMiddle checks that damage before the tail is reported, never skipped silently.
func TestCorruptMiddle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	if _, err := s.CreateNamespace(ctx, "t", memory.Namespace{Name: "ns", Dimension: 3, Metric: memory.MetricL2}); err != nil {
		t.Fatal(err)
	}
	first := s.logSize
	for i := range 3 {
		if err := s.Upsert(ctx, "t", "ns", []memory.Record{{ID: string(rune('a' + i)), Vector: []float32{1, 2, 3}}}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	f, _ := os.OpenFile(filepath.Join(dir, "memory.log"), os.O_WRONLY, 0)
	if _, err := f.WriteAt([]byte{0xAB}, first+12); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if s, err := Open(dir); err == nil {
		s.Close()
		t.Fatal("Open succeeded on a log corrupt before its tail")
	}
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if s2, err := Open(dir); err == nil {
		s2.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
	s.Close()
	s3 := open(t, dir)
	s3.Close()
}

func TestQuotaContract(t *testing.T) {
	memorytest.RunQuota(t, func(t *testing.T, q memory.Quota) memory.Store {
		s, err := Open(t.TempDir(), WithQuota(q))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
