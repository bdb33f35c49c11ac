// Package sqldb opens the relational database a process keeps its records in: SQLite (embedded default, pure Go)
// or PostgreSQL (production), behind database/sql, and applies a component's versioned migrations with goose.
//
// On Postgres a process opens one pgx pool, shared by every component it runs ([DB.Pool]; database/sql goes
// through the same pool with pgx's stdlib adapter). Each component owns a schema of its own, named
// <prefix>_<component> ("loom_memory", "loom_agent", "loom_orchestrator", "loom_admin"), so any subset of
// services and any number of replicas can share one database without their tables colliding. [DB.Component]
// returns the handle of one component.
//
// Queries are written once, with '?' placeholders and table names qualified by the placeholder schema "loom."
// (for example "SELECT id FROM loom.runs WHERE tenant = ?"); [DB.Rebind] turns them into the component's
// schema and '$n' placeholders for Postgres, and drops the qualifier for SQLite, where each component has a file
// of its own.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	pgxvec "github.com/pgvector/pgvector-go/pgx"
	"github.com/pressly/goose/v3"
	noopmetric "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Dialect is a database engine.
type Dialect string

// The supported dialects.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// DefaultMaxConns is the size of a process's Postgres pool when [Options.MaxConns] is zero.
const DefaultMaxConns = 16

// DefaultSchemaPrefix names the schemas of an installation whose database URL sets no loom_schema_prefix.
const DefaultSchemaPrefix = "loom"

// SchemaPrefixParam is the database URL query parameter naming the schema prefix, for users who host several
// Loom installations in one database: "postgres://host/db?loom_schema_prefix=staging" puts the memory
// component's tables in schema "staging_memory". It is removed from the URL before connecting.
const SchemaPrefixParam = "loom_schema_prefix"

// The components, each with a Postgres schema of its own. AdminComponent holds what AdminService manages: API
// keys, the audit trail and tenants' provider keys.
const (
	MemoryComponent       = "memory"
	AgentComponent        = "agent"
	OrchestratorComponent = "orchestrator"
	AdminComponent        = "admin"
)

// Schemas returns the Postgres schema of every component under prefix (DefaultSchemaPrefix when empty), for
// tools that handle all of an installation's schemas, such as backups.
func Schemas(prefix string) []string {
	if prefix == "" {
		prefix = DefaultSchemaPrefix
	}
	var out []string
	for _, c := range [...]string{MemoryComponent, AgentComponent, OrchestratorComponent, AdminComponent} {
		out = append(out, prefix+"_"+c)
	}
	return out
}

var validPrefix = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// Options tune Open. The zero value is ready to use.
type Options struct {
	// MaxConns bounds the Postgres pool shared by every component of the process; zero means
	// DefaultMaxConns. SQLite always uses one connection. A read replica's pool has the same bound.
	MaxConns int
	// ReadURL, when set, names a streaming replica of the Postgres database (a "postgres://..." URL of the same
	// database on the standby; its loom_schema_prefix, if any, must be the primary's). Reads routed through
	// [DB.Read], [DB.Reader] and [DB.ReadPool] then go to it while it is up, within ReadMaxLag and has replayed
	// the caller's last write (see replica.go). Open does not wait for the replica: one that is down sends reads
	// to the primary until it answers. Empty means every read goes to the primary. Postgres only.
	ReadURL string
	// ReadMaxLag is how far the replica may lag the primary before reads leave it; zero means
	// DefaultReadMaxLag.
	ReadMaxLag time.Duration
	// TracerProvider, when set, traces Postgres queries, batches, COPYs and connects (github.com/exaring/otelpgx
	// on the pool's pgx QueryTracer hook) as children of the span in the query's context; queries outside a traced
	// call make no spans. Statements are recorded, their arguments never. Nil means no tracing, at no cost.
	TracerProvider trace.TracerProvider
}

// DB is an open database, or one component's view of it (see [DB.Component]). It is safe for concurrent use.
type DB struct {
	*sql.DB
	// Dialect tells which engine is behind DB.
	Dialect Dialect
	// Pool is the pgx pool behind DB on Postgres, shared by every component's view; nil on SQLite.
	Pool *pgxpool.Pool
	// Schema is the Postgres schema of the component this view is for; empty for the root handle and on SQLite.
	Schema string

	prefix  string
	url     string // Postgres: the connection URL without SchemaPrefixParam
	root    bool
	replica *replica     // the read replica, shared by every view; nil without Options.ReadURL
	reads   *sqliteReads // SQLite: the read-only connections of Reads, opened on first use
}

// sqliteReadConns is the size of the read-only connection pool [DB.Reads] opens on SQLite.
const sqliteReadConns = 4

// sqliteReads is the read-only pool behind [DB.Reads] on SQLite.
type sqliteReads struct {
	dsn  string
	once sync.Once
	db   *sql.DB
	err  error
}

// IsPostgres reports whether url names a Postgres database.
func IsPostgres(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// Open opens url: "postgres://..." or "postgresql://..." opens Postgres with one pgx pool; "sqlite:PATH" or a
// plain file path opens SQLite in WAL mode with full synchronous commits (an acknowledged write survives kill -9
// and power loss), and creates the file's directory. The connection is checked before Open returns. The caller
// closes the returned root handle, after every component using it has stopped.
func Open(ctx context.Context, url string, opts ...Options) (*DB, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if IsPostgres(url) {
		return openPostgres(ctx, url, o)
	}
	if o.ReadURL != "" {
		return nil, errors.New("open sqlite: a read replica (ReadURL) needs Postgres")
	}
	path := strings.TrimPrefix(url, "sqlite:")
	if path == "" {
		return nil, errors.New("open sqlite: empty path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(ON)&_txlock=immediate"
	sqlDB, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	// One connection: SQLite has one writer at a time, and a single connection avoids SQLITE_BUSY entirely.
	sqlDB.SetMaxOpenConns(1)
	db := &DB{DB: sqlDB, Dialect: SQLite, root: true}
	if path != ":memory:" && !strings.Contains(path, "mode=memory") { // each connection would have a database of its own
		db.reads = &sqliteReads{dsn: "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=query_only(1)"}
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("ping sqlite: %w", err)
	}
	return db, nil
}

func openPostgres(ctx context.Context, rawURL string, o Options) (*DB, error) {
	connURL, prefix, err := splitPrefix(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	cfg, err := poolConfig(connURL, o.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	cfg.ConnConfig.Tracer = queryTracer(o)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping postgres: %w", err)
	}
	db := &DB{DB: stdlib.OpenDBFromPool(pool), Dialect: Postgres, Pool: pool, prefix: prefix, url: connURL, root: true}
	if o.ReadURL != "" {
		if db.replica, err = openReplica(o, pool, prefix); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// queryTracer is the pgx tracer of a pool opened with o: nil without Options.TracerProvider.
func queryTracer(o Options) pgx.QueryTracer {
	if o.TracerProvider == nil {
		return nil
	}
	return otelpgx.NewTracer(otelpgx.WithTracerProvider(o.TracerProvider), otelpgx.WithDisableAcquireTracer(),
		otelpgx.WithMeterProvider(noopmetric.NewMeterProvider()))
}

// poolConfig is the pgx pool configuration of a Postgres URL, for the primary and the read replica alike.
func poolConfig(connURL string, maxConns int) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(connURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(DefaultMaxConns)
	if maxConns > 0 {
		cfg.MaxConns = int32(maxConns)
	}
	// pgvector's types are registered on connections to databases that have the extension; the memory component
	// creates it and then resets the pool (see EnsureVector), so connections made before know it too. A replica's
	// connection made before the replica replayed the extension's creation uses pgvector's text format, which
	// works as well.
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		var has bool
		if err := c.QueryRow(ctx, "SELECT to_regtype('vector') IS NOT NULL").Scan(&has); err != nil {
			return err
		}
		if !has {
			return nil
		}
		return pgxvec.RegisterTypes(ctx, c)
	}
	return cfg, nil
}

// splitPrefix removes SchemaPrefixParam from a Postgres URL and returns the prefix (DefaultSchemaPrefix when
// absent).
func splitPrefix(raw string) (string, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", errors.New("malformed database URL") // url's error would quote the password
	}
	q := u.Query()
	prefix := q.Get(SchemaPrefixParam)
	if !q.Has(SchemaPrefixParam) {
		return raw, DefaultSchemaPrefix, nil
	}
	if !validPrefix.MatchString(prefix) {
		return "", "", fmt.Errorf("%s %q: want a lowercase letter, then up to 39 lowercase letters, digits or '_'", SchemaPrefixParam, prefix)
	}
	q.Del(SchemaPrefixParam)
	u.RawQuery = q.Encode()
	return u.String(), prefix, nil
}

// Component returns the view of db for one component: on Postgres its queries and migrations use schema
// <prefix>_<name>; on SQLite it is db itself. A view shares db's connections: closing it does nothing, and it
// must not be used after db is closed. name is lowercase letters and '_'.
func (db *DB) Component(name string) *DB {
	if db.Dialect != Postgres {
		return db
	}
	schema := db.prefix + "_" + name
	if db.Schema == schema {
		return db
	}
	v := *db
	v.Schema = schema
	v.root = false
	return &v
}

// Reads returns the handle for short reads that need not wait for writes: on SQLite a pool of read-only
// connections to the same file (WAL lets readers run while the one writer commits), so such a read never queues
// behind another caller's transaction and its fsync on the single read-write connection; elsewhere, and if the
// pool cannot be opened, db.DB. A read sees every transaction committed before it started. Its connections are
// opened on first use and closed with the root handle. Reads on Postgres do not go to the replica: use [DB.Read].
func (db *DB) Reads(ctx context.Context) *sql.DB {
	r := db.reads
	if r == nil {
		return db.DB
	}
	r.once.Do(func() {
		d, err := sql.Open("sqlite", r.dsn)
		if err == nil {
			d.SetMaxOpenConns(sqliteReadConns)
			if err = d.PingContext(context.WithoutCancel(ctx)); err != nil {
				d.Close()
			}
		}
		r.db, r.err = d, err
	})
	if r.err != nil || r.db == nil {
		return db.DB
	}
	return r.db
}

// Close closes the database if db is the root handle returned by Open, and does nothing for a component's view.
func (db *DB) Close() error {
	if !db.root {
		return nil
	}
	if db.replica != nil {
		db.replica.close()
	}
	err := db.DB.Close()
	if r := db.reads; r != nil {
		r.once.Do(func() {}) // a pool not opened yet never will be
		if r.db != nil {
			err = errors.Join(err, r.db.Close())
		}
	}
	if db.Pool != nil {
		db.Pool.Close()
	}
	return err
}

// Table returns name qualified by the component's schema on Postgres, quoted, and name itself on SQLite.
func (db *DB) Table(name string) string {
	if db.Dialect != Postgres || db.Schema == "" {
		return name
	}
	return pgx.Identifier{db.Schema, name}.Sanitize()
}

// Rebind rewrites a query written for both dialects (see the package comment): for Postgres "loom." becomes the
// component's schema and '?' placeholders become '$1', '$2', ...; for SQLite "loom." is removed. It does not
// look inside string literals: queries must pass values as arguments.
func (db *DB) Rebind(query string) string {
	if db.Dialect != Postgres {
		return strings.ReplaceAll(query, "loom.", "")
	}
	qualifier := ""
	if db.Schema != "" {
		qualifier = pgx.Identifier{db.Schema}.Sanitize() + "."
	}
	query = strings.ReplaceAll(query, "loom.", qualifier)
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Migrate applies the migrations in fsys that have not been applied yet, in version order. fsys holds goose SQL
// files (NNNNN_name.sql) written in the subset of SQL both dialects accept, or per-dialect directories "sqlite"
// and "postgres" when they differ; their table names are unqualified. component names the migration set
// ("agent", "orchestrator", "authn"...): each keeps its versions in its own table, goose_<component>.
//
// On Postgres the migrations run in db's schema (see [DB.Component]), which Migrate creates, under an advisory
// lock, so replicas starting together take turns. A database laid out by earlier releases, with the component's
// tables in the public schema, is upgraded in place: when public holds goose_<component> or the first table of
// legacy, and the schema has no goose table yet, the tables named by legacy (LIKE patterns, such as
// "memory_records_%"), the goose table, and the enum types and functions matching a pattern are moved into the
// schema, in one transaction, before the migrations run.
func (db *DB) Migrate(ctx context.Context, component string, fsys fs.FS, legacy ...string) error {
	if component == "" || strings.ContainsFunc(component, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r == '_') }) {
		return fmt.Errorf("migrate: component %q: want lowercase letters and '_'", component)
	}
	if sub, err := fs.Sub(fsys, string(db.Dialect)); err == nil {
		if entries, err := fs.ReadDir(sub, "."); err == nil && len(entries) > 0 {
			fsys = sub
		}
	}
	if db.Dialect != Postgres {
		return runGoose(ctx, goose.DialectSQLite3, db.DB, component, fsys)
	}
	if db.Schema == "" {
		return fmt.Errorf("migrate %s: no schema: call Migrate on db.Component(name)", component)
	}
	return db.withLock(ctx, func(conn *pgxpool.Conn) error {
		if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{db.Schema}.Sanitize()); err != nil {
			return fmt.Errorf("migrate %s: create schema: %w", component, err)
		}
		if err := db.moveLegacy(ctx, conn, component, legacy); err != nil {
			return fmt.Errorf("migrate %s: upgrade from the public schema: %w", component, err)
		}
		// The migrations' unqualified names resolve to the schema: a short-lived connection with that search
		// path runs them (public stays on the path for extension types such as vector).
		mdb, err := db.openWithSearchPath()
		if err != nil {
			return fmt.Errorf("migrate %s: %w", component, err)
		}
		defer mdb.Close()
		return runGoose(ctx, goose.DialectPostgres, mdb, component, fsys)
	})
}

func runGoose(ctx context.Context, dialect goose.Dialect, sqlDB *sql.DB, component string, fsys fs.FS) error {
	p, err := goose.NewProvider(dialect, sqlDB, fsys, goose.WithTableName("goose_"+component))
	if err != nil {
		return fmt.Errorf("migrate %s: %w", component, err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate %s: %w", component, err)
	}
	return nil
}

// migrateLock is the advisory lock key under which components migrate (one for every Loom component: schema
// creation and the move from public must not interleave).
const migrateLock = 7438291002

// Locked runs fn holding the lock under which components migrate (on Postgres; SQLite runs fn as it is), for
// migrations that sqldb does not run itself, such as River's: replicas starting together then take turns
// instead of racing to create the same objects.
func (db *DB) Locked(ctx context.Context, fn func(ctx context.Context) error) error {
	if db.Dialect != Postgres {
		return fn(ctx)
	}
	return db.withLock(ctx, func(*pgxpool.Conn) error { return fn(ctx) })
}

func (db *DB) withLock(ctx context.Context, fn func(conn *pgxpool.Conn) error) error {
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrateLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		// A lost connection releases the lock by itself; an unlock error only matters on a live one.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(migrateLock))
	}()
	return fn(conn)
}

func (db *DB) openWithSearchPath() (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(db.url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["search_path"] = pgx.Identifier{db.Schema}.Sanitize() + ", public"
	sqlDB := stdlib.OpenDB(*cfg)
	sqlDB.SetMaxOpenConns(2)
	return sqlDB, nil
}

// moveLegacy moves a component's tables, and the enum types and functions whose names match legacy, from public
// into db.Schema (see Migrate). An entry "name(column)" moves table name only if it has that column: two
// components of earlier releases could each own a table of the same name, in different databases.
func (db *DB) moveLegacy(ctx context.Context, conn *pgxpool.Conn, component string, legacy []string) error {
	gooseTable := "goose_" + component
	marker := gooseTable
	if len(legacy) > 0 {
		marker, _, _ = strings.Cut(legacy[0], "(")
	}
	var inPublic, inSchema bool
	err := conn.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename IN ($1, $3)),
		EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $2 AND tablename = $1)`, gooseTable, db.Schema, marker).Scan(&inPublic, &inSchema)
	if err != nil || !inPublic || inSchema {
		return err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	schema := pgx.Identifier{db.Schema}.Sanitize()
	move := func(kind, object string) error {
		if _, err := tx.Exec(ctx, "ALTER "+kind+" "+object+" SET SCHEMA "+schema); err != nil {
			return fmt.Errorf("move %s %s: %w", strings.ToLower(kind), object, err)
		}
		return nil
	}
	for _, entry := range append([]string{gooseTable}, legacy...) {
		pattern, column, _ := strings.Cut(strings.TrimSuffix(entry, ")"), "(")
		rows, err := tx.Query(ctx, `SELECT t.tablename FROM pg_tables t WHERE t.schemaname = 'public' AND t.tablename LIKE $1
			AND ($2 = '' OR EXISTS (SELECT 1 FROM information_schema.columns c
				WHERE c.table_schema = 'public' AND c.table_name = t.tablename AND c.column_name = $2))
			ORDER BY t.tablename`, pattern, column)
		if err != nil {
			return err
		}
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, t := range tables {
			// Indexes, constraints, owned sequences and the row type move with the table.
			if err := move("TABLE", pgx.Identifier{"public", t}.Sanitize()); err != nil {
				return err
			}
		}
		if column != "" {
			continue
		}
		// Types first: a function's signature names them, and is read after they moved.
		for _, q := range []string{
			`SELECT 'TYPE', format('public.%I', t.typname) FROM pg_type t
				WHERE t.typnamespace = 'public'::regnamespace AND t.typtype = 'e' AND t.typname LIKE $1`,
			`SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p
				WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE $1`,
		} {
			rows, err = tx.Query(ctx, q, pattern)
			if err != nil {
				return err
			}
			type object struct{ Kind, Name string }
			objects, err := pgx.CollectRows(rows, pgx.RowToStructByPos[object])
			if err != nil {
				return err
			}
			for _, o := range objects {
				name := o.Name
				if o.Kind == "FUNCTION" && !strings.HasPrefix(name, "public.") {
					name = "public." + name // regprocedure leaves out schemas on the search path
				}
				if err := move(o.Kind, name); err != nil {
					return err
				}
			}
		}
	}
	return tx.Commit(ctx)
}
