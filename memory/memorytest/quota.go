package memorytest

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loom-dev/loom/memory"
)

// RunQuota runs the quota part of the contract: newStore returns a fresh, empty store enforcing q for every
// tenant; it registers its own cleanup.
func RunQuota(t *testing.T, newStore func(t *testing.T, q memory.Quota) memory.Store) {
	tests := []struct {
		name  string
		quota memory.Quota
		fn    func(t *testing.T, s memory.Store)
	}{
		{"Namespaces", memory.Quota{Namespaces: 2}, testQuotaNamespaces},
		{"Records", memory.Quota{Records: 10}, testQuotaRecords},
		{"Bytes", memory.Quota{Bytes: 10_000}, testQuotaBytes},
		{"BatchAllOrNothing", memory.Quota{Records: 10}, testQuotaBatch},
		{"ExpiredRecordsMakeRoom", memory.Quota{Records: 3}, testQuotaExpired},
		{"Concurrent", memory.Quota{Records: 50}, testQuotaConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t, tc.quota))
		})
	}
}

// wantQuota fails unless err is a *memory.QuotaError on quota.
func wantQuota(t *testing.T, what string, err error, quota string) {
	t.Helper()
	var qe *memory.QuotaError
	if !errors.Is(err, memory.ErrQuotaExceeded) || !errors.As(err, &qe) || qe.Quota != quota {
		t.Fatalf("%s: %v, want a quota error on %s", what, err, quota)
	}
	if !strings.Contains(err.Error(), quota) {
		t.Errorf("%s: message %q does not name the quota %s", what, err, quota)
	}
}

func recs(prefix string, n int, text string) []memory.Record {
	out := make([]memory.Record, n)
	for i := range out {
		out[i] = memory.Record{ID: fmt.Sprintf("%s%d", prefix, i), Text: text, Vector: []float32{1, float32(i), 0}}
	}
	return out
}

func testQuotaNamespaces(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "a", Dimension: 3})
	mustCreate(t, s, "t1", memory.Namespace{Name: "b", Dimension: 3})
	_, err := s.CreateNamespace(ctx, "t1", memory.Namespace{Name: "c", Dimension: 3, Metric: memory.MetricCosine})
	wantQuota(t, "third namespace", err, "namespaces")
	if _, err := s.GetNamespace(ctx, "t1", "c", false); !errors.Is(err, memory.ErrNotFound) {
		t.Fatalf("refused namespace exists: %v", err)
	}
	mustCreate(t, s, "t2", memory.Namespace{Name: "c", Dimension: 3}) // another tenant has its own quota
	if err := s.DeleteNamespace(ctx, "t1", "a"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "t1", memory.Namespace{Name: "c", Dimension: 3})
}

func testQuotaRecords(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "a", Dimension: 3})
	mustCreate(t, s, "t1", memory.Namespace{Name: "b", Dimension: 3})
	mustUpsert(t, s, "t1", "a", recs("a", 6, ""))
	mustUpsert(t, s, "t1", "b", recs("b", 2, ""))
	// The quota is over the tenant's namespaces together: 8 held, 3 more is 11.
	wantQuota(t, "3 new records at 8 of 10", s.Upsert(ctx, "t1", "b", recs("c", 3, "")), "records")
	// Overwrites add no records: 8 overwritten and 2 new make 10.
	mustUpsert(t, s, "t1", "a", append(recs("a", 6, "x"), recs("n", 2, "")...))
	mustUpsert(t, s, "t1", "b", recs("b", 2, "y"))
	wantQuota(t, "one record at 10 of 10", s.Upsert(ctx, "t1", "b", recs("z", 1, "")), "records")
	mustCreate(t, s, "t2", memory.Namespace{Name: "a", Dimension: 3})
	mustUpsert(t, s, "t2", "a", recs("a", 10, "")) // another tenant has its own quota
	if n, err := s.Delete(ctx, "t1", "a", []string{"a0", "a1", "a2"}, nil); err != nil || n != 3 {
		t.Fatalf("Delete = %d, %v", n, err)
	}
	mustUpsert(t, s, "t1", "b", recs("z", 3, ""))
	wantQuota(t, "one record at 10 of 10 after deletes", s.Upsert(ctx, "t1", "b", recs("w", 1, "")), "records")
	// Deleting a namespace frees its records.
	if err := s.DeleteNamespace(ctx, "t1", "a"); err != nil {
		t.Fatal(err)
	}
	mustUpsert(t, s, "t1", "b", recs("v", 5, ""))
}

func testQuotaBytes(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "a", Dimension: 3})
	text := strings.Repeat("x", 1000) // about 1,020 bytes a record
	mustUpsert(t, s, "t1", "a", recs("a", 5, text))
	wantQuota(t, "5 more records of 1 KB at 5 KB of 10 KB", s.Upsert(ctx, "t1", "a", recs("b", 5, text)), "bytes")
	if c := count(t, s, "t1", "a"); c != 5 {
		t.Fatalf("count after a refused batch = %d, want 5", c)
	}
	mustUpsert(t, s, "t1", "a", recs("b", 4, text))
	// Shrinking a record is never refused, and frees room: 4 KB + 5 small ones, then 5 KB more.
	mustUpsert(t, s, "t1", "a", recs("a", 5, "small"))
	mustUpsert(t, s, "t1", "a", recs("c", 5, text))
	wantQuota(t, "one more record at the bytes quota", s.Upsert(ctx, "t1", "a", recs("d", 1, text)), "bytes")
	// Growing a record is refused when it crosses the quota.
	wantQuota(t, "growing records at the bytes quota", s.Upsert(ctx, "t1", "a", recs("a", 5, text)), "bytes")
	got, err := s.Get(ctx, "t1", "a", []string{"a0"}, false)
	if err != nil || len(got) != 1 || got[0].Text != "small" {
		t.Fatalf("refused overwrite changed the record: %v, %v", got, err)
	}
}

func testQuotaBatch(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "a", Dimension: 3})
	mustUpsert(t, s, "t1", "a", recs("a", 4, "old"))
	// A batch that crosses the quota part way writes nothing: neither its new records nor its overwrites.
	batch := append(recs("a", 4, "new"), recs("b", 300, "")...) // past pgstore's COPY threshold
	wantQuota(t, "batch of 304 at 4 of 10", s.Upsert(ctx, "t1", "a", batch), "records")
	if c := count(t, s, "t1", "a"); c != 4 {
		t.Fatalf("count after refused batch = %d, want 4", c)
	}
	got, err := s.Get(ctx, "t1", "a", []string{"a0", "a3", "b0", "b299"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Text != "old" || got[1].Text != "old" {
		t.Fatalf("refused batch left records behind: %+v", got)
	}
	// Duplicate ids in one batch count once.
	dup := append(recs("b", 6, ""), recs("b", 6, "again")...)
	mustUpsert(t, s, "t1", "a", dup)
	if c := count(t, s, "t1", "a"); c != 10 {
		t.Fatalf("count = %d, want 10", c)
	}
}

func testQuotaExpired(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "a", Dimension: 3})
	old := recs("a", 3, "")
	for i := range old {
		old[i].ExpireTime = time.Now().Add(-time.Hour)
	}
	mustUpsert(t, s, "t1", "a", old)
	// Expired records still take room until removed; a write that needs the room removes them first.
	mustUpsert(t, s, "t1", "a", recs("b", 3, ""))
	if c := count(t, s, "t1", "a"); c != 3 {
		t.Fatalf("count = %d, want 3", c)
	}
	wantQuota(t, "a fourth live record", s.Upsert(ctx, "t1", "a", recs("c", 1, "")), "records")
}

func testQuotaConcurrent(t *testing.T, s memory.Store) {
	mustCreate(t, s, "t1", memory.Namespace{Name: "a", Dimension: 3})
	mustCreate(t, s, "t1", memory.Namespace{Name: "b", Dimension: 3})
	// 20 writers of 5 new records each, over two namespaces, against a quota of 50: exactly 10 succeed.
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for w := range 20 {
		wg.Go(func() {
			ns := []string{"a", "b"}[w%2]
			err := s.Upsert(ctx, "t1", ns, recs(fmt.Sprintf("w%d-", w), 5, ""))
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, memory.ErrQuotaExceeded):
				refused.Add(1)
			default:
				t.Errorf("writer %d: %v", w, err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 10 || refused.Load() != 10 {
		t.Fatalf("%d writes passed and %d were refused, want 10 and 10", ok.Load(), refused.Load())
	}
	if c := count(t, s, "t1", "a") + count(t, s, "t1", "b"); c != 50 {
		t.Fatalf("records = %d, want 50", c)
	}
}
