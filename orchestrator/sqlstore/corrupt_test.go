package sqlstore_test

import (
	"context"
	"testing"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

// TestListSkipsUndecodableBlueprint corrupts one stored blueprint directly in the database and checks that
// ListBlueprints skips it with a logged error, pages stay whole, and DeleteBlueprint still removes it.
func TestListSkipsUndecodableBlueprint(t *testing.T) {
	sqldbtest.EachCorruption(t, func(t *testing.T, c sqldbtest.Corruption) {
		ctx := context.Background()
		s, err := sqlstore.New(ctx, c.DB, sqlstore.WithLogger(c.Logger))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a", "b", "c", "d"} {
			if _, err := s.CreateBlueprint(ctx, "t1", orchestratortest.Blueprint(name, "input.x")); err != nil {
				t.Fatal(err)
			}
		}
		c.Exec(t, sqldb.OrchestratorComponent, `UPDATE loom.blueprint_versions SET definition = ? WHERE tenant = ? AND name = ?`,
			[]byte{0xff, 0xff, 0xff, 0xff}, "t1", "b")
		sqldbtest.ExpectListed(t, "ListBlueprints", "a,c,d", (*orchestratorv1.Blueprint).GetName, func(token string) ([]*orchestratorv1.Blueprint, string, error) {
			return s.ListBlueprints(ctx, "t1", 2, token)
		})
		c.ExpectLogs(t, "the skipped row", "skips an undecodable blueprint", "blueprint=b")
		if err := s.DeleteBlueprint(ctx, "t1", "b"); err != nil {
			t.Errorf("DeleteBlueprint(corrupt) = %v", err)
		}
	})
}
