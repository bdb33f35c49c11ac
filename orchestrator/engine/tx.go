package engine

import (
	"context"
	"database/sql"
	"errors"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/loom-dev/loom/internal/sqldb"
)

// rows is the part of *sql.Rows and pgx.Rows the engine uses.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// querier runs '?'-placeholder queries on a database or inside a transaction, whichever driver is behind it.
type querier interface {
	exec(ctx context.Context, query string, args ...any) (int64, error)
	query(ctx context.Context, query string, args ...any) (rows, func(), error)
	dialect() sqldb.Dialect
}

var errNoRows = errors.New("no rows")

// queryRow runs a query expected to return one row and scans it; errNoRows if there is none.
func queryRow(ctx context.Context, q querier, query string, args []any, dest ...any) error {
	rs, done, err := q.query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer done()
	if !rs.Next() {
		if err := rs.Err(); err != nil {
			return err
		}
		return errNoRows
	}
	return rs.Scan(dest...)
}

type sqlDBQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// sqlQuerier runs queries through database/sql (SQLite, and reads on Postgres).
type sqlQuerier struct {
	db *sqldb.DB
	q  sqlDBQuerier
	// tx and stmts, when set (SQLite write transactions), run writes as statements prepared once: parsing them
	// again for every commit costs about as much as the statements themselves.
	tx    *sql.Tx
	stmts *stmtCache
}

func (s sqlQuerier) dialect() sqldb.Dialect { return s.db.Dialect }

func (s sqlQuerier) exec(ctx context.Context, query string, args ...any) (int64, error) {
	if s.tx != nil && s.stmts != nil {
		if st := s.stmts.get(query); st != nil {
			res, err := s.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
			if err != nil {
				return 0, err
			}
			return res.RowsAffected()
		}
	}
	res, err := s.q.ExecContext(ctx, s.db.Rebind(query), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (s sqlQuerier) query(ctx context.Context, query string, args ...any) (rows, func(), error) {
	rs, err := s.q.QueryContext(ctx, s.db.Rebind(query), args...)
	if err != nil {
		return nil, nil, err
	}
	return rs, func() { rs.Close() }, nil
}

// stmtCache holds prepared statements by query text (SQLite: one connection, so each is prepared once).
type stmtCache struct {
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

const maxStmts = 256

// get returns the prepared statement of query, or nil when it is not prepared yet. It never prepares: inside a
// transaction that would wait for the connection the transaction holds.
func (c *stmtCache) get(query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[query]
}

// prepare prepares the queries not prepared yet. Call it outside any transaction.
func (c *stmtCache) prepare(ctx context.Context, db *sqldb.DB, queries []string) {
	for _, q := range queries {
		if c.get(q) != nil {
			continue
		}
		st, err := db.PrepareContext(ctx, db.Rebind(q))
		if err != nil {
			continue // run it unprepared; its error surfaces there
		}
		c.mu.Lock()
		if c.m == nil || len(c.m) >= maxStmts {
			for _, old := range c.m {
				_ = old.Close()
			}
			c.m = make(map[string]*sql.Stmt)
		}
		if prev := c.m[q]; prev != nil {
			_ = prev.Close()
		}
		c.m[q] = st
		c.mu.Unlock()
	}
}

// pgxQuerier runs queries on the pgx pool or in a pgx transaction (Postgres writes).
type pgxQuerier struct {
	db *sqldb.DB // for Rebind
	tx interface {
		Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
		Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	}
}

func (p pgxQuerier) dialect() sqldb.Dialect { return sqldb.Postgres }

func (p pgxQuerier) exec(ctx context.Context, query string, args ...any) (int64, error) {
	tag, err := p.tx.Exec(ctx, p.db.Rebind(query), args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func (p pgxQuerier) query(ctx context.Context, query string, args ...any) (rows, func(), error) {
	rs, err := p.tx.Query(ctx, p.db.Rebind(query), args...)
	if err != nil {
		return nil, nil, err
	}
	return rs, rs.Close, nil
}

// stmt is one statement of a batch.
type stmt struct {
	query string
	args  []any
}

// txn is one write transaction.
type txn struct {
	querier
	db *sqldb.DB
	pg pgx.Tx // nil on SQLite
}

// execAll runs statements in order: on Postgres in one round trip (a pgx batch), on SQLite one by one (they are
// in-process calls).
func (t *txn) execAll(ctx context.Context, stmts []stmt) error {
	_, err := t.execCounts(ctx, stmts)
	return err
}

// execCounts runs statements (on Postgres in one round trip) and returns how many rows each changed.
func (t *txn) execCounts(ctx context.Context, stmts []stmt) ([]int64, error) {
	if len(stmts) == 0 {
		return nil, nil
	}
	counts := make([]int64, len(stmts))
	if t.pg == nil {
		for i, s := range stmts {
			n, err := t.exec(ctx, s.query, s.args...)
			if err != nil {
				return nil, err
			}
			counts[i] = n
		}
		return counts, nil
	}
	b := &pgx.Batch{}
	for _, s := range stmts {
		b.Queue(t.db.Rebind(s.query), s.args...)
	}
	res := t.pg.SendBatch(ctx, b)
	for i := range stmts {
		tag, err := res.Exec()
		if err != nil {
			_ = res.Close()
			return nil, err
		}
		counts[i] = tag.RowsAffected()
	}
	return counts, res.Close()
}

// execFirst runs statements in one round trip on Postgres (on SQLite one by one, stopping when the first changes
// nothing) and returns how many rows the first one changed.
func (t *txn) execFirst(ctx context.Context, stmts []stmt) (int64, error) {
	if t.pg == nil {
		n, err := t.exec(ctx, stmts[0].query, stmts[0].args...)
		if err != nil || n == 0 {
			return n, err
		}
		return n, t.execAll(ctx, stmts[1:])
	}
	counts, err := t.execCounts(ctx, stmts)
	if err != nil {
		return 0, err
	}
	return counts[0], nil
}

// inTx runs fn in a write transaction: through the pgx pool on Postgres, database/sql on SQLite (whose
// transactions take the write lock at BEGIN).
func (e *Engine) inTx(ctx context.Context, fn func(tx *txn) error) error {
	if e.db.Dialect == sqldb.Postgres {
		tx, err := e.db.Pool.Begin(ctx)
		if err != nil {
			return err
		}
		if err := fn(&txn{querier: pgxQuerier{db: e.db, tx: tx}, db: e.db, pg: tx}); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			return err
		}
		return tx.Commit(ctx)
	}
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(&txn{querier: sqlQuerier{db: e.db, q: tx, tx: tx, stmts: &e.stmts}, db: e.db}); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}
