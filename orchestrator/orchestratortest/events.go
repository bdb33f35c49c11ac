package orchestratortest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Sequences returns the run event sequence numbers from through to, both included, in order: what a run's
// events read back from from carry when none is missing. It is empty when to < from.
func Sequences(from, to int64) []int64 {
	var out []int64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// Querier is what [Partitions] reads the catalog through: a *pgx.Conn or a *pgxpool.Pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Partitions lists the partitions of the Postgres table (schema-qualified, such as
// loom_orchestrator.run_events) from the catalog (pg_inherits), by name; none when the table does not exist.
func Partitions(tb testing.TB, q Querier, table string) []string {
	tb.Helper()
	rows, err := q.Query(context.Background(), `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = to_regclass($1) ORDER BY c.relname`, table)
	if err != nil {
		tb.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatal(err)
	}
	return names
}
