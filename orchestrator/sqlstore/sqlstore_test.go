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
	sqldbtest.EachDialect(t, func(t *testing.T, dialect sqldb.Dialect) {
		t.Parallel()
		orchestratortest.RunStore(t, func(t *testing.T) orchestrator.Store {
			s, err := sqlstore.New(context.Background(), sqldbtest.OpenMigrated(t, dialect, "orchestrator", migrate))
			if err != nil {
				t.Fatalf("sqlstore.New() error = %v", err)
			}
			return s
		})
	})
}

// migrate applies the store's migrations: the template every Postgres test database is cloned from.
func migrate(ctx context.Context, db *sqldb.DB) error {
	_, err := sqlstore.New(ctx, db)
	return err
}
