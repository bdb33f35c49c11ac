package sqldbtest_test

import (
	"context"
	"testing"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// TestPostgresTemplate checks that prepare runs once per key, that every clone starts with what it made, and
// that clones are independent of each other.
func TestPostgresTemplate(t *testing.T) {
	prepared := 0
	prepare := func(ctx context.Context, db *sqldb.DB) error {
		prepared++
		_, err := db.ExecContext(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
		return err
	}
	a := sqldbtest.OpenMigrated(t, sqldb.Postgres, "templatetest", prepare)
	b := sqldbtest.OpenMigrated(t, sqldb.Postgres, "templatetest", prepare)
	if prepared != 1 {
		t.Errorf("prepare ran %d times, want once", prepared)
	}
	if _, err := a.ExecContext(t.Context(), "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	for name, db := range map[string]*sqldb.DB{"a": a, "b": b} {
		var n int
		if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want := map[string]int{"a": 2, "b": 1}[name]; n != want {
			t.Errorf("clone %s holds %d rows, want %d", name, n, want)
		}
	}
	s := sqldbtest.OpenMigrated(t, sqldb.SQLite, "templatetest", prepare)
	if prepared != 2 {
		t.Errorf("SQLite: prepare ran %d times in all, want 2", prepared)
	}
	var n int
	if err := s.QueryRowContext(t.Context(), "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Errorf("SQLite: %d rows, %v", n, err)
	}
}
