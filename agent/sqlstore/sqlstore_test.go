package sqlstore_test

import (
	"context"
	"testing"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/agenttest"
	"github.com/loom-dev/loom/agent/sqlstore"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func TestStore(t *testing.T) {
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		agenttest.RunStoreTests(t, func(t *testing.T) agent.Store {
			s, err := sqlstore.New(context.Background(), sqldbtest.Open(t, d))
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
}
