package engine

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

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
}

func (s sqlQuerier) dialect() sqldb.Dialect { return s.db.Dialect }

func (s sqlQuerier) exec(ctx context.Context, query string, args ...any) (int64, error) {
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

// pgxQuerier runs queries in a pgx transaction (Postgres writes, which share the transaction with River).
type pgxQuerier struct {
	db *sqldb.DB // for Rebind
	tx pgx.Tx
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

// txn is one write transaction: the queries, the River jobs inserted with them and the job completed with them
// all commit or roll back together.
type txn struct {
	querier
	insert   func(ctx context.Context, params []river.InsertManyParams) ([]int64, error)
	complete func(ctx context.Context, job *river.Job[stepArgs]) error
}

// backend is the River client and transaction plumbing of one driver.
type backend interface {
	inTx(ctx context.Context, fn func(tx *txn) error) error
	start(ctx context.Context) error
	stop(ctx context.Context) error
	cancelJob(ctx context.Context, id int64) error
}

type sqliteBackend struct {
	db     *sqldb.DB
	client *river.Client[*sql.Tx]
}

func newSQLiteBackend(ctx context.Context, db *sqldb.DB, cfg *river.Config) (*sqliteBackend, error) {
	driver := riversqlite.New(db.DB)
	if err := migrateRiver(ctx, driver, ""); err != nil {
		return nil, err
	}
	client, err := river.NewClient(driver, cfg)
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	return &sqliteBackend{db: db, client: client}, nil
}

func (b *sqliteBackend) inTx(ctx context.Context, fn func(tx *txn) error) error {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	t := &txn{
		querier: sqlQuerier{db: b.db, q: tx},
		insert: func(ctx context.Context, params []river.InsertManyParams) ([]int64, error) {
			return insertedIDs(b.client.InsertManyTx(ctx, tx, params))
		},
		complete: func(ctx context.Context, job *river.Job[stepArgs]) error {
			_, err := river.JobCompleteTx[*riversqlite.Driver](ctx, tx, job)
			return err
		},
	}
	if err := fn(t); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (b *sqliteBackend) start(ctx context.Context) error { return b.client.Start(ctx) }
func (b *sqliteBackend) stop(ctx context.Context) error  { return b.client.Stop(ctx) }
func (b *sqliteBackend) cancelJob(ctx context.Context, id int64) error {
	_, err := b.client.JobCancel(ctx, id)
	return err
}

type pgxBackend struct {
	db     *sqldb.DB
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
}

func newPgxBackend(ctx context.Context, db *sqldb.DB, cfg *river.Config) (*pgxBackend, error) {
	pool := db.Pool
	driver := riverpgxv5.New(pool)
	// Replicas starting together would race to create River's types and triggers.
	if err := db.Locked(ctx, func(ctx context.Context) error { return migrateRiver(ctx, driver, db.Schema) }); err != nil {
		return nil, err
	}
	client, err := river.NewClient(driver, cfg)
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	return &pgxBackend{db: db, pool: pool, client: client}, nil
}

func (b *pgxBackend) inTx(ctx context.Context, fn func(tx *txn) error) error {
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return err
	}
	t := &txn{
		querier: pgxQuerier{db: b.db, tx: tx},
		insert: func(ctx context.Context, params []river.InsertManyParams) ([]int64, error) {
			return insertedIDs(b.client.InsertManyTx(ctx, tx, params))
		},
		complete: func(ctx context.Context, job *river.Job[stepArgs]) error {
			_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
			return err
		},
	}
	if err := fn(t); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

func (b *pgxBackend) start(ctx context.Context) error { return b.client.Start(ctx) }
func (b *pgxBackend) stop(ctx context.Context) error  { return b.client.Stop(ctx) }
func (b *pgxBackend) cancelJob(ctx context.Context, id int64) error {
	_, err := b.client.JobCancel(ctx, id)
	return err
}

func migrateRiver[TTx any](ctx context.Context, driver riverdriver.Driver[TTx], schema string) error {
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema})
	if err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	return nil
}

func insertedIDs(res []*rivertype.JobInsertResult, err error) ([]int64, error) {
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(res))
	for i, r := range res {
		ids[i] = r.Job.ID
	}
	return ids, nil
}
