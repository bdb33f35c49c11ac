package sqlstore

import (
	"context"
	"errors"
	"testing"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// FuzzPageToken feeds arbitrary page tokens to both list methods: they answer a page or a page_token
// InvalidArgument, never another error or a panic.
func FuzzPageToken(f *testing.F) {
	f.Add(pagetoken.Encode("runs", runToken{Time: 1, ID: "r"}))
	f.Add(pagetoken.Encode("agents", agentToken{Name: "a"}))
	f.Add("")
	f.Add("e30")
	f.Add("!!")
	s, err := New(context.Background(), sqldbtest.Open(f, sqldb.SQLite))
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, tok string) {
		_, _, err := s.ListRuns(ctx, "t", agent.RunFilter{Agent: "a"}, 10, tok)
		if err != nil && !errors.Is(err, agent.ErrInvalidArgument) {
			t.Fatalf("ListRuns(%q): %v", tok, err)
		}
		_, _, err = s.ListAgents(ctx, "t", 10, tok)
		if err != nil && !errors.Is(err, agent.ErrInvalidArgument) {
			t.Fatalf("ListAgents(%q): %v", tok, err)
		}
	})
}
