package sqldbtest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/sqldb"
)

// Corruption is what [EachDialect] hands a test that damages stored rows behind a store's back: a fresh
// database of one dialect and a logger whose lines the test can read.
type Corruption struct {
	// Dialect is the database's dialect.
	Dialect sqldb.Dialect
	// DB is a fresh database from [Open].
	DB *sqldb.DB
	// Logger writes text lines into Logs; give it to the store under test.
	Logger *slog.Logger
	// Logs holds what Logger wrote.
	Logs *logtest.Buffer
}

// EachDialect runs f as a subtest for SQLite and then Postgres, each with its own [Corruption].
func EachDialect(t *testing.T, f func(t *testing.T, c Corruption)) {
	t.Helper()
	for _, d := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		t.Run(fmt.Sprint(d), func(t *testing.T) {
			logs := new(logtest.Buffer)
			f(t, Corruption{Dialect: d, DB: Open(t, d), Logger: slog.New(slog.NewTextHandler(logs, nil)), Logs: logs})
		})
	}
}

// Exec runs q, written with ? placeholders, on component of c.DB, failing t if it fails.
func (c Corruption) Exec(t testing.TB, component, q string, args ...any) {
	t.Helper()
	cdb := c.DB.Component(component)
	if _, err := cdb.ExecContext(context.Background(), cdb.Rebind(q), args...); err != nil {
		t.Fatal(err)
	}
}

// ExpectLogs fails t unless c.Logs contains every one of subs, saying that it wanted what.
func (c Corruption) ExpectLogs(t testing.TB, what string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(c.Logs.String(), sub) {
			t.Errorf("log = %q, want %s", c.Logs.String(), what)
			return
		}
	}
}

// ExpectListed pages through list, starting with the empty token, for at most 10 pages, and fails t unless the
// names of the items listed, in order and joined by commas, are want. It fails t at once if a page fails, naming
// the call what.
func ExpectListed[T any](t testing.TB, what, want string, name func(T) string, list func(token string) ([]T, string, error)) {
	t.Helper()
	var got []string
	token := ""
	for pages := 0; pages < 10; pages++ {
		items, next, err := list(token)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for _, it := range items {
			got = append(got, name(it))
		}
		if token = next; token == "" {
			break
		}
	}
	if strings.Join(got, ",") != want {
		t.Errorf("listed %v, want %s", got, want)
	}
}
