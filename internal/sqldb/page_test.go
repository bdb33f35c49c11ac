package sqldb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// TestReadPage pages through the keys k1..k5 of which k3 does not decode: every page is cut on the rows read,
// the undecodable row is skipped without shortening its page, and the last page says there is no more.
func TestReadPage(t *testing.T) {
	t.Parallel()
	db := sqldbtest.Open(t, sqldb.SQLite)
	ctx := context.Background()
	query := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5)
		SELECT 'k' || x FROM c WHERE 'k' || x > ? ORDER BY 1 LIMIT ?`
	page := func(after string, size int) (kept []string, last string, more bool, err error) {
		rows, err := db.QueryContext(ctx, query, after, size+1)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		next, err := sqldb.ReadPage(rows, size, "keys", func(rows *sql.Rows) (string, error) {
			var key string
			if err := rows.Scan(&key); err != nil {
				return "", err
			}
			if key != "k3" { // k3 does not decode: skipped, but it counts towards the page
				kept = append(kept, key)
			}
			return key, nil
		})
		if more = next != ""; more {
			if derr := pagetoken.Decode("keys", next, &last); derr != nil {
				t.Fatalf("next page token %q: %v", next, derr)
			}
		}
		return kept, last, more, err
	}
	for _, tc := range []struct {
		after string
		size  int
		kept  []string
		last  string
		more  bool
	}{
		{after: "", size: 2, kept: []string{"k1", "k2"}, last: "k2", more: true},
		{after: "k2", size: 2, kept: []string{"k4"}, last: "k4", more: true},
		{after: "k4", size: 2, kept: []string{"k5"}},
		{after: "", size: 5, kept: []string{"k1", "k2", "k4", "k5"}},
		{after: "", size: 4, kept: []string{"k1", "k2", "k4"}, last: "k4", more: true},
		{after: "k5", size: 2},
	} {
		t.Run(fmt.Sprintf("after %q size %d", tc.after, tc.size), func(t *testing.T) {
			kept, last, more, err := page(tc.after, tc.size)
			if err != nil || !slices.Equal(kept, tc.kept) || last != tc.last || more != tc.more {
				t.Errorf("page = %v, last %q, more %v, err %v; want %v, %q, %v", kept, last, more, err, tc.kept, tc.last, tc.more)
			}
		})
	}
	t.Run("read fails", func(t *testing.T) {
		rows, err := db.QueryContext(ctx, query, "", 3)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		boom := errors.New("boom")
		if _, err := sqldb.ReadPage(rows, 2, "keys", func(*sql.Rows) (string, error) { return "", boom }); !errors.Is(err, boom) {
			t.Errorf("err = %v, want %v", err, boom)
		}
	})
}
