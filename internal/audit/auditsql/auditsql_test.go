package auditsql_test

import (
	"context"
	"sync"
	"testing"
	"time"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/audit/auditsql"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func TestStore(t *testing.T) {
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		ctx := context.Background()
		s, err := auditsql.Open(ctx, sqldbtest.Open(t, d))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				tenant := "a"
				if i%4 == 0 {
					tenant = "b"
				}
				if err := s.Append(ctx, audit.Event{Time: time.Now(), Tenant: tenant, Subject: "s", Procedure: "/p", Result: "ok"}); err != nil {
					t.Errorf("append: %v", err)
				}
			})
		}
		wg.Wait()
		var all []audit.Event
		token := ""
		for {
			page, next, err := s.List(ctx, "a", 4, token)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, page...)
			if next == "" {
				break
			}
			token = next
		}
		if len(all) != 15 {
			t.Fatalf("tenant a has %d events, want 15 (and none of b's)", len(all))
		}
		for i := 1; i < len(all); i++ {
			if all[i].Seq >= all[i-1].Seq {
				t.Errorf("not newest first: %d after %d", all[i].Seq, all[i-1].Seq)
			}
		}
		if _, _, err := s.List(ctx, "a", 4, "!!"); err != auditsql.ErrInvalidPageToken {
			t.Errorf("bad token: %v", err)
		}
	})
}

func TestResourceAndMutating(t *testing.T) {
	t.Parallel()
	if got := audit.Resource(&memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "docs"}}); got != "docs" {
		t.Errorf("Resource(CreateNamespace) = %q", got)
	}
	if got := audit.Resource(&memoryv1.UpsertRequest{Namespace: "notes"}); got != "notes" {
		t.Errorf("Resource(Upsert) = %q", got)
	}
	if audit.Mutating("/loom.memory.v1.MemoryService/Search") || !audit.Mutating("/loom.memory.v1.MemoryService/Upsert") {
		t.Error("Mutating does not follow idempotency_level")
	}
}
