package sqlstore_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// TestListSkipsUndecodableAgent corrupts one stored agent directly in the database and checks that ListAgents
// skips it with a logged error, pages stay whole, GetAgent reports it, and DeleteAgent still removes it.
func TestListSkipsUndecodableAgent(t *testing.T) {
	sqldbtest.EachCorruption(t, func(t *testing.T, c sqldbtest.Corruption) {
		ctx := context.Background()
		s := loggedStore(t, c)
		for _, name := range []string{"a", "b", "c", "d"} {
			if _, err := s.CreateAgent(ctx, "t1", &agentv1.Agent{Name: name, Instructions: "x"}); err != nil {
				t.Fatal(err)
			}
		}
		c.Exec(t, sqldb.AgentComponent, `UPDATE loom.agent_versions SET spec = ? WHERE tenant = ? AND name = ?`,
			[]byte{0xff, 0xff, 0xff, 0xff}, "t1", "b")
		sqldbtest.ExpectListed(t, "ListAgents", "a,c,d", (*agentv1.Agent).GetName, func(token string) ([]*agentv1.Agent, string, error) {
			return s.ListAgents(ctx, "t1", 2, token)
		})
		c.ExpectLogs(t, "the skipped row", "skips an undecodable agent", "agent=b")
		if _, err := s.GetAgent(ctx, "t1", "b", 0); err == nil {
			t.Error("GetAgent(corrupt) succeeded")
		}
		if err := s.DeleteAgent(ctx, "t1", "b"); err != nil {
			t.Errorf("DeleteAgent(corrupt) = %v", err)
		}
	})
}

// TestListSkipsUndecodableRun corrupts stored runs directly in the database: on both dialects one run's steps
// (detail) become bytes that are not protobuf; on SQLite, whose columns take any type, one run's input becomes
// text that is not UTF-8 (a protobuf string must be) and another's token count becomes text. ListRuns, page by
// page, returns the good runs and logs the bad ones; GetRun reports the undecodable detail; DeleteRun removes
// every one of them.
func TestListSkipsUndecodableRun(t *testing.T) {
	sqldbtest.EachCorruption(t, func(t *testing.T, c sqldbtest.Corruption) {
		ctx := context.Background()
		s := loggedStore(t, c)
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for i, id := range []string{"r1", "r2", "r3", "r4", "r5"} {
			r := &agentv1.Run{Id: id, Agent: "a", AgentVersion: 1, State: agentv1.RunState_RUN_STATE_SUCCEEDED,
				Input: "hi", CreateTime: timestamppb.New(base.Add(time.Duration(i) * time.Minute))}
			if err := s.CreateRun(ctx, "t1", r, agent.Lease{}); err != nil {
				t.Fatal(err)
			}
		}
		c.Exec(t, sqldb.AgentComponent, `UPDATE loom.runs SET detail = ? WHERE id = ?`, []byte{0xff, 0xff, 0xff, 0xff}, "r2")
		want, bad := "r5,r4,r3,r2,r1", []string{"r2"} // ListRuns reads no detail
		if c.Dialect == sqldb.SQLite {
			c.Exec(t, sqldb.AgentComponent, `UPDATE loom.runs SET input = CAST(X'C328FF' AS TEXT) WHERE id = ?`, "r3")
			c.Exec(t, sqldb.AgentComponent, `UPDATE loom.runs SET input_tokens = 'many' WHERE id = ?`, "r4")
			want, bad = "r5,r2,r1", []string{"r2", "r3", "r4"}
		}
		sqldbtest.ExpectListed(t, "ListRuns", want, (*agentv1.Run).GetId, func(token string) ([]*agentv1.Run, string, error) {
			return s.ListRuns(ctx, "t1", agent.RunFilter{}, 2, token)
		})
		if c.Dialect == sqldb.SQLite {
			c.ExpectLogs(t, "the skipped rows", "skips an undecodable run", "run=r3")
		}
		if _, err := s.GetRun(ctx, "t1", "r2"); err == nil {
			t.Error("GetRun(corrupt detail) succeeded")
		}
		for _, id := range bad {
			if err := s.DeleteRun(ctx, "t1", id); err != nil {
				t.Errorf("DeleteRun(corrupt %s) = %v", id, err)
			}
		}
		t.Logf("%s: %d corrupt runs, lists broken 0, deleted %d", c.Dialect, len(bad), len(bad))
	})
}

// loggedStore is a store on c.DB that logs to c.Logger.
func loggedStore(t *testing.T, c sqldbtest.Corruption) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.New(context.Background(), c.DB, sqlstore.WithLogger(c.Logger))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
