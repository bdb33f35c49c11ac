package sqlstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestListSkipsUndecodableAgent corrupts one stored agent directly in the database and checks that ListAgents
// skips it with a logged error, pages stay whole, GetAgent reports it, and DeleteAgent still removes it.
func TestListSkipsUndecodableAgent(t *testing.T) {
	for _, d := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		t.Run(fmt.Sprint(d), func(t *testing.T) {
			ctx := context.Background()
			db := sqldbtest.Open(t, d)
			var logs syncBuffer
			s, err := sqlstore.New(ctx, db, sqlstore.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"a", "b", "c", "d"} {
				if _, err := s.CreateAgent(ctx, "t1", &agentv1.Agent{Name: name, Instructions: "x"}); err != nil {
					t.Fatal(err)
				}
			}
			cdb := db.Component(sqldb.AgentComponent)
			if _, err := cdb.ExecContext(ctx, cdb.Rebind(`UPDATE loom.agent_versions SET spec = ? WHERE tenant = ? AND name = ?`),
				[]byte{0xff, 0xff, 0xff, 0xff}, "t1", "b"); err != nil {
				t.Fatal(err)
			}
			var got []string
			token := ""
			for pages := 0; pages < 10; pages++ {
				list, next, err := s.ListAgents(ctx, "t1", 2, token)
				if err != nil {
					t.Fatalf("ListAgents: %v", err)
				}
				for _, a := range list {
					got = append(got, a.GetName())
				}
				if token = next; token == "" {
					break
				}
			}
			if strings.Join(got, ",") != "a,c,d" {
				t.Errorf("listed %v, want a,c,d", got)
			}
			if !strings.Contains(logs.String(), "skips an undecodable agent") || !strings.Contains(logs.String(), "agent=b") {
				t.Errorf("log = %q, want the skipped row", logs.String())
			}
			if _, err := s.GetAgent(ctx, "t1", "b", 0); err == nil {
				t.Error("GetAgent(corrupt) succeeded")
			}
			if err := s.DeleteAgent(ctx, "t1", "b"); err != nil {
				t.Errorf("DeleteAgent(corrupt) = %v", err)
			}
		})
	}
}
