package sqldb_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// TestGroup writes 300 rows from 300 goroutines through one Group, on both dialects: every row is there, a write
// that fails (a duplicate key) fails alone and leaves nothing behind, and the others commit.
func TestGroup(t *testing.T) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, dialect sqldb.Dialect) {
		t.Parallel()
		db := sqldbtest.Open(t, dialect)
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, "CREATE TABLE g (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
			t.Fatal(err)
		}
		g := sqldb.NewGroup(db)
		insert := func(id int, v string) error {
			return g.Exec(ctx, func(ctx context.Context, tx sqldb.Execer) error {
				_, err := tx.ExecContext(ctx, db.Rebind("INSERT INTO g (id, v) VALUES (?, ?)"), id, v)
				return err
			})
		}
		const n = 300
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				id := i
				if i == 150 {
					id = 7 // a duplicate of row 7: it must fail on its own
				}
				errs[i] = insert(id, fmt.Sprint("row-", i))
			})
		}
		wg.Wait()
		failed := 0
		for i, err := range errs {
			if err != nil {
				failed++
				if i != 150 && i != 7 {
					t.Errorf("write %d failed: %v", i, err)
				}
			}
		}
		if failed != 1 {
			t.Errorf("%d writes failed, want exactly the duplicate", failed)
		}
		var count int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM g").Scan(&count); err != nil || count != n-1 {
			t.Errorf("%d rows (%v), want %d", count, err, n-1)
		}
		// A cancelled caller returns at once; the group goes on.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_ = g.Exec(cctx, func(ctx context.Context, tx sqldb.Execer) error {
			_, err := tx.ExecContext(ctx, db.Rebind("INSERT INTO g (id, v) VALUES (?, ?)"), 10_000, "late")
			return err
		})
		if err := insert(10_001, "after"); err != nil {
			t.Errorf("write after a cancelled one: %v", err)
		}
		if err := g.Exec(ctx, func(context.Context, sqldb.Execer) error { return errBoom }); !errors.Is(err, errBoom) {
			t.Errorf("fn's own error = %v, want it returned", err)
		}
	})
}

var errBoom = errors.New("boom")

// BenchmarkGroup writes one row per call from 50 goroutines, alternating rounds with a Group and with one
// autocommit statement per call, and reports the rows per second of each and the ratio: what sharing commits
// gives concurrent writers (SQLite: synchronous=FULL, one fsync per commit).
func BenchmarkGroup(b *testing.B) {
	sqldbtest.EachDialect(b, func(b *testing.B, dialect sqldb.Dialect) {
		db := sqldbtest.Open(b, dialect)
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, "CREATE TABLE g (id BIGINT PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
			b.Fatal(err)
		}
		g := sqldb.NewGroup(db)
		q := db.Rebind("INSERT INTO g (id, v) VALUES (?, ?)")
		var next int64
		var mu sync.Mutex
		id := func() int64 {
			mu.Lock()
			defer mu.Unlock()
			next++
			return next
		}
		round := func(grouped bool, perWorker int) time.Duration {
			start := time.Now()
			var wg sync.WaitGroup
			for range 50 {
				wg.Go(func() {
					for range perWorker {
						var err error
						if grouped {
							err = g.Exec(ctx, func(ctx context.Context, tx sqldb.Execer) error {
								_, err := tx.ExecContext(ctx, q, id(), "x")
								return err
							})
						} else {
							_, err = db.ExecContext(ctx, q, id(), "x")
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			return time.Since(start)
		}
		var single, grouped time.Duration
		writes := 0
		for b.Loop() {
			single += round(false, 4)
			grouped += round(true, 4)
			writes += 200
		}
		b.ReportMetric(float64(writes)/single.Seconds(), "rows/s-autocommit")
		b.ReportMetric(float64(writes)/grouped.Seconds(), "rows/s-group")
		b.ReportMetric(single.Seconds()/grouped.Seconds(), "x-autocommit")
	})
}

// TestReads checks SQLite's read-only connections: a read does not wait for a transaction open on the one
// read-write connection, sees what was committed before it, and cannot write.
func TestReads(t *testing.T) {
	t.Parallel()
	db := sqldbtest.Open(t, sqldb.SQLite)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE TABLE r (id INTEGER PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO r (id) VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil) // holds the read-write connection
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "INSERT INTO r (id) VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Reads(ctx).QueryRowContext(ctx, "SELECT count(*) FROM r").Scan(&n); err != nil || n != 1 {
		t.Errorf("read beside an open transaction = %d, %v; want the 1 committed row", n, err)
	}
	if _, err := db.Reads(ctx).ExecContext(ctx, "INSERT INTO r (id) VALUES (3)"); err == nil {
		t.Error("a write through Reads succeeded; want it refused (query_only)")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := db.Reads(ctx).QueryRowContext(ctx, "SELECT count(*) FROM r").Scan(&n); err != nil || n != 2 {
		t.Errorf("read after the commit = %d, %v; want 2", n, err)
	}
}
