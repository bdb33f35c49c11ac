package sqlstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

// TestListSkipsUndecodableBlueprint corrupts one stored blueprint directly in the database and checks that
// ListBlueprints skips it with a logged error, pages stay whole, and DeleteBlueprint still removes it.
func TestListSkipsUndecodableBlueprint(t *testing.T) {
	for _, d := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		t.Run(fmt.Sprint(d), func(t *testing.T) {
			ctx := context.Background()
			db := sqldbtest.Open(t, d)
			var logs logtest.Buffer
			s, err := sqlstore.New(ctx, db, sqlstore.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"a", "b", "c", "d"} {
				if _, err := s.CreateBlueprint(ctx, "t1", orchestratortest.Blueprint(name, "input.x")); err != nil {
					t.Fatal(err)
				}
			}
			cdb := db.Component(sqldb.OrchestratorComponent)
			if _, err := cdb.ExecContext(ctx, cdb.Rebind(`UPDATE loom.blueprint_versions SET definition = ? WHERE tenant = ? AND name = ?`),
				[]byte{0xff, 0xff, 0xff, 0xff}, "t1", "b"); err != nil {
				t.Fatal(err)
			}
			var got []string
			token := ""
			for pages := 0; pages < 10; pages++ {
				var list []*orchestratorv1.Blueprint
				list, token, err = s.ListBlueprints(ctx, "t1", 2, token)
				if err != nil {
					t.Fatalf("ListBlueprints: %v", err)
				}
				for _, bp := range list {
					got = append(got, bp.GetName())
				}
				if token == "" {
					break
				}
			}
			if strings.Join(got, ",") != "a,c,d" {
				t.Errorf("listed %v, want a,c,d", got)
			}
			if !strings.Contains(logs.String(), "skips an undecodable blueprint") || !strings.Contains(logs.String(), "blueprint=b") {
				t.Errorf("log = %q, want the skipped row", logs.String())
			}
			if err := s.DeleteBlueprint(ctx, "t1", "b"); err != nil {
				t.Errorf("DeleteBlueprint(corrupt) = %v", err)
			}
		})
	}
}
