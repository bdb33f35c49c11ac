package sqlstore_test

import (
	"context"
	"testing"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

func TestStore(t *testing.T) {
	t.Parallel()
	for _, dialect := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		t.Run(string(dialect), func(t *testing.T) {
			t.Parallel()
			orchestratortest.RunStore(t, func(t *testing.T) orchestrator.Store {
				s, err := sqlstore.New(context.Background(), sqldbtest.Open(t, dialect))
				if err != nil {
					t.Fatalf("sqlstore.New() error = %v", err)
				}
				return s
			})
		})
	}
}
