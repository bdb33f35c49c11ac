package sqldbtest

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/sqldb"
)

// EachDialect runs f as a subtest for each dialect, SQLite then Postgres, named for it. f calls t.Parallel
// itself where it may run in parallel with the other dialect's subtest. T is *testing.T or *testing.B.
func EachDialect[T interface {
	testing.TB
	Run(name string, f func(T)) bool
}](t T, f func(t T, d sqldb.Dialect)) {
	t.Helper()
	for _, d := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		t.Run(string(d), func(t T) { f(t, d) })
	}
}

// Corruption is what [EachCorruption] hands a test that damages stored rows behind a store's back: a fresh
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

// EachCorruption runs f as a subtest for SQLite and then Postgres ([EachDialect]), each with its own
// [Corruption].
func EachCorruption(t *testing.T, f func(t *testing.T, c Corruption)) {
	t.Helper()
	EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		logs := new(logtest.Buffer)
		f(t, Corruption{Dialect: d, DB: Open(t, d), Logger: slog.New(slog.NewTextHandler(logs, nil)), Logs: logs})
	})
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
