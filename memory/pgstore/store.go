// Package pgstore is the PostgreSQL + pgvector memory.Store.
//
// Layout: a catalog table memory_namespaces (tenant, name, dimension, metric, index parameters) and one records
// table per namespace, memory_records_<id>, whose embedding column is typed vector(dimension). A table per
// namespace (rather than one shared table with an untyped vector column and partial expression indexes) gives
// each namespace a plain HNSW index the planner always uses, exact statistics, per-namespace index parameters,
// and DeleteNamespace as a DROP TABLE. Tenancy is enforced by the catalog: a records table is reached only
// through its (tenant, name) row.
//
// Each records table holds id (primary key), text, embedding, metadata jsonb (GIN jsonb_path_ops index) and a
// generated tsvector (GIN index, 'simple' configuration) for hybrid search, expire_time and update_time.
// Namespaces of INDEX_KIND_EXACT, and those wider than 2000 dimensions (pgvector's HNSW limit for vector), have no
// HNSW index and are scanned exactly.
//
// Search sends its planner settings (hnsw.ef_search, hnsw.iterative_scan = relaxed_order from pgvector 0.8, and
// enable_seqscan off) and its query as one pipeline, one round trip, the settings local to the pipeline's
// implicit transaction; a filtered HNSW scan keeps going until it has top_k matches, and the results are
// re-sorted by exact distance. If the index scan still returns fewer than top_k rows (the iterative scan gives up after
// hnsw.max_scan_tuples), the query is re-run as an exact scan, so a filter never silently returns fewer rows
// than exist. Filters compile to parameterised SQL; user values are never spliced into the query text.
//
// Upsert writes a batch in one transaction: small batches as one pipelined batch of INSERT ... ON CONFLICT, large
// ones by COPY into a temporary table then one INSERT ... SELECT ... ON CONFLICT. The HNSW index is built after
// the load, not maintained row by row during it (see IndexDelay and BuildIndexes).
//
// With a read replica (sqldb.Options.ReadURL), Search, Get, GetNamespace and ListNamespaces read from it when the
// caller may (sqldb.DB.Read: the replica is up, close enough, and has replayed the caller's writes, which every
// write method records with sqldb.DB.Wrote).
//
// Quotas (WithQuota): each catalog row counts its namespace's records and bytes (migration 00002), kept in step
// by every write in the write's own transaction; a tenant's usage is the sum of its few catalog rows. With a
// quota, a tenant's writes take a transaction-scoped advisory lock on the tenant, so concurrent writes cannot
// both pass, and a batch over the quota is rolled back whole.
package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pgvector/pgvector-go"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/memory"
)

// Defaults for namespaces that leave index parameters at zero.
const (
	DefaultM              = 16
	DefaultEfConstruction = 64
	// DefaultEfSearch is the HNSW candidate list size; it is raised to top_k when top_k is larger. Measured on
	// membench's clustered data (cosine, m 16, ef_construction 64): recall@10 >= 0.95 at 100k x 768.
	DefaultEfSearch = 100
	// maxHNSWDimension is pgvector's limit for an HNSW index on vector.
	maxHNSWDimension = 2000
	// copyThreshold is the batch size from which Upsert uses COPY.
	copyThreshold = 200
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations is the goose directory of the store's schema.
var migrations, _ = fs.Sub(migrationFiles, "migrations") // the directory is embedded: Sub cannot fail

var _ memory.Store = (*Store)(nil)

// Store is the Postgres store. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	db   *sqldb.DB // the memory component's view: its schema qualifies every table
	// ns is the qualified name of the namespace catalog table.
	ns string
	// nsCache maps tenant\x00name to the namespace's nsRow, for Search.
	nsCache sync.Map
	// indexed holds the ids of namespaces whose HNSW index is known to exist.
	indexed sync.Map

	buildMu    sync.Mutex
	builds     map[int64]*time.Timer // pending deferred index builds, by namespace id
	pending    map[int64]nsRow
	buildWG    sync.WaitGroup
	buildCtx   context.Context // cancelled by Close; parent of background builds only
	stopBuilds context.CancelFunc
	closed     bool
	// indexNow builds a namespace's index in its first Upsert instead of deferring it (tests).
	indexNow bool
	// quota bounds each tenant (see WithQuota).
	quota memory.Quota
	// observer is told of every search (see WithObserver); nil observes nothing.
	observer memory.SearchObserver
}

// Option configures a Store.
type Option func(*Store)

// WithQuota bounds what each tenant may keep: namespaces, records and record bytes (as this store counts them:
// id, text, 4 per vector element and the metadata's JSON text), over all its namespaces. A write over a quota
// fails with a *memory.QuotaError and writes nothing. With a quota, a tenant's writes that add records or
// namespaces are serialised (a transaction-scoped advisory lock on the tenant), so concurrent writes cannot
// both pass. The default is no limit; `loom serve` passes memory.DefaultQuota unless configured otherwise.
func WithQuota(q memory.Quota) Option { return func(s *Store) { s.quota = q } }

// WithObserver has o told of every search, with its mode ("exact", "hnsw" or "hybrid"), for traces and
// metrics; the search's queries run in the context o returns.
func WithObserver(o memory.SearchObserver) Option { return func(s *Store) { s.observer = o } }

// New applies the store's migrations to db (a Postgres database; the vector extension must exist or the user
// must be allowed to create it) in the memory component's schema, and returns the store over db's pool. The
// caller keeps ownership of db and closes it after the store.
func New(ctx context.Context, db *sqldb.DB, opts ...Option) (*Store, error) {
	if db.Dialect != sqldb.Postgres {
		return nil, fmt.Errorf("open pgstore: needs a Postgres database, got %s", db.Dialect)
	}
	db = db.Component(sqldb.MemoryComponent)
	if err := ensureVector(ctx, db); err != nil {
		return nil, fmt.Errorf("open pgstore: %w", err)
	}
	// The catalog and the records tables of databases made before schemas existed move from public: the
	// catalog names the legacy layout (its hand-rolled migration table moves along and is then dropped).
	if err := db.Migrate(ctx, "memory", migrations, "memory_namespaces", "memory_records_%", "memory_schema_migrations"); err != nil {
		return nil, fmt.Errorf("open pgstore: %w", err)
	}
	bctx, cancel := context.WithCancel(context.Background())
	s := &Store{pool: db.Pool, db: db, ns: db.Table("memory_namespaces"), builds: map[int64]*time.Timer{}, buildCtx: bctx, stopBuilds: cancel}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// recordSize is a record's bytes in SQL, over a records table aliased t; the usage counters add it up.
const recordSize = "(octet_length(t.id) + octet_length(t.text) + 4 * vector_dims(t.embedding) + octet_length(t.metadata::text))"

// lockTenant serialises the tenant's quota-checked writes until tx ends. Without a quota it does nothing.
func (s *Store) lockTenant(ctx context.Context, tx pgx.Tx, tenant string) error {
	if s.quota == (memory.Quota{}) {
		return nil
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('loom.memory.quota:' || $1, 0))", tenant); err != nil {
		return fmt.Errorf("lock tenant usage: %w", err)
	}
	return nil
}

// usage is what tenant holds, read in tx.
func (s *Store) usage(ctx context.Context, tx pgx.Tx, tenant string) (memory.Usage, error) {
	var u memory.Usage
	err := tx.QueryRow(ctx, "SELECT count(*), coalesce(sum(record_count), 0), coalesce(sum(size_bytes), 0) FROM "+s.ns+" WHERE tenant = $1", tenant).
		Scan(&u.Namespaces, &u.Records, &u.Bytes)
	if err != nil {
		return memory.Usage{}, fmt.Errorf("read tenant usage: %w", err)
	}
	return u, nil
}

// Usage returns what tenant holds, as the quota counts it.
func (s *Store) Usage(ctx context.Context, tenant string) (memory.Usage, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return memory.Usage{}, fmt.Errorf("usage: %w", err)
	}
	defer tx.Rollback(ctx)
	return s.usage(ctx, tx, tenant)
}

// purgeExpired deletes tenant's expired records (they count against its quota until removed) and reports
// whether it deleted any.
func (s *Store) purgeExpired(ctx context.Context, tenant string) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("remove expired records: %w", err)
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, "SELECT "+nsColumns+" FROM "+s.ns+" WHERE tenant = $1 ORDER BY id FOR UPDATE", tenant)
	if err != nil {
		return false, fmt.Errorf("remove expired records: %w", err)
	}
	var nss []nsRow
	for rows.Next() {
		r, err := scanNS(rows)
		if err != nil {
			rows.Close()
			return false, fmt.Errorf("remove expired records: %w", err)
		}
		nss = append(nss, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("remove expired records: %w", err)
	}
	var purged bool
	for _, r := range nss {
		var n, b int64
		err := tx.QueryRow(ctx, "WITH d AS (DELETE FROM "+s.records(r)+" t WHERE NOT "+alive+" RETURNING "+recordSize+" AS size) SELECT count(*), coalesce(sum(size), 0) FROM d").Scan(&n, &b)
		if err != nil {
			return false, fmt.Errorf("remove expired records: %w", err)
		}
		if n > 0 {
			purged = true
			if err := s.addUsage(ctx, tx, r.id, -n, -b); err != nil {
				return false, err
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("remove expired records: %w", err)
	}
	s.db.Wrote(ctx)
	return purged, nil
}

// addUsage adds to a namespace's counters in tx.
func (s *Store) addUsage(ctx context.Context, tx pgx.Tx, id, records, bytes int64) error {
	if records == 0 && bytes == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, "UPDATE "+s.ns+" SET record_count = record_count + $2, size_bytes = size_bytes + $3 WHERE id = $1", id, records, bytes); err != nil {
		return fmt.Errorf("update usage: %w", err)
	}
	return nil
}

// ensureVector creates the vector extension if it is missing, then resets the pool so that every connection
// registers pgvector's types (connections made before the extension existed do not know them).
func ensureVector(ctx context.Context, db *sqldb.DB) error {
	var has bool
	if err := db.Pool.QueryRow(ctx, "SELECT to_regtype('vector') IS NOT NULL").Scan(&has); err != nil {
		return fmt.Errorf("check vector extension: %w", err)
	}
	if has {
		return nil
	}
	if _, err := db.Pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS vector"); err != nil {
		return fmt.Errorf("create vector extension: %w", err)
	}
	db.Pool.Reset()
	return nil
}

// Close stops pending index builds and waits for running ones to be cancelled. The pool stays open: it belongs
// to the database handle given to New.
func (s *Store) Close() error {
	s.buildMu.Lock()
	s.closed = true
	for id, t := range s.builds {
		t.Stop()
		delete(s.builds, id)
	}
	s.buildMu.Unlock()
	s.stopBuilds()
	s.buildWG.Wait()
	return nil
}

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// nsRow is a namespace's catalog row.
type nsRow struct {
	id   int64
	meta memory.Namespace
}

// table is the name of the namespace's records table, unqualified (index names are built from it).
func (r nsRow) table() string { return "memory_records_" + strconv.FormatInt(r.id, 10) }

// records is the qualified name of row's records table.
func (s *Store) records(row nsRow) string { return s.db.Table(row.table()) }

const nsColumns = "id, name, dimension, metric, embedder_provider, embedder_model, index_kind, m, ef_construction, ef_search, description, create_time"

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func scanNS(row pgx.Row) (nsRow, error) {
	var r nsRow
	var metric, kind, m, efc, efs, dim int
	err := row.Scan(&r.id, &r.meta.Name, &dim, &metric, &r.meta.EmbedderProvider, &r.meta.EmbedderModel, &kind, &m, &efc, &efs, &r.meta.Description, &r.meta.CreateTime)
	r.meta.Dimension, r.meta.Metric, r.meta.IndexKind = dim, memory.Metric(metric), memory.IndexKind(kind)
	r.meta.M, r.meta.EfConstruction, r.meta.EfSearch = m, efc, efs
	r.meta.CreateTime = r.meta.CreateTime.UTC()
	return r, err
}

func (s *Store) lookup(ctx context.Context, q querier, tenant, name string) (nsRow, error) {
	r, err := scanNS(q.QueryRow(ctx, "SELECT "+nsColumns+" FROM "+s.ns+" WHERE tenant = $1 AND name = $2", tenant, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nsRow{}, fmt.Errorf("namespace %q: %w", name, memory.ErrNotFound)
	}
	if err != nil {
		return nsRow{}, fmt.Errorf("look up namespace: %w", err)
	}
	return r, nil
}

// vectorOps is how pgvector spells a metric: the operator class of an HNSW index over it and its distance
// operator.
type vectorOps struct{ opsClass, distanceOp string }

// opsOf returns how pgvector spells m; any metric but dot product and L2 is cosine.
func opsOf(m memory.Metric) vectorOps {
	switch m {
	case memory.MetricDotProduct:
		return vectorOps{opsClass: "vector_ip_ops", distanceOp: "<#>"}
	case memory.MetricL2:
		return vectorOps{opsClass: "vector_l2_ops", distanceOp: "<->"}
	}
	return vectorOps{opsClass: "vector_cosine_ops", distanceOp: "<=>"}
}

// score turns a pgvector distance into the contract's "higher is closer" score.
func score(m memory.Metric, d float64) float32 {
	switch m {
	case memory.MetricDotProduct, memory.MetricL2:
		return float32(-d)
	}
	return float32(1 - d)
}

func hasHNSW(ns memory.Namespace) bool {
	return ns.IndexKind != memory.IndexExact && ns.Dimension <= maxHNSWDimension
}

// CreateNamespace implements memory.Store.
func (s *Store) CreateNamespace(ctx context.Context, tenant string, ns memory.Namespace) (memory.Namespace, error) {
	if err := memory.CheckNamespace(ns); err != nil {
		return memory.Namespace{}, err
	}
	if ns.IndexKind == memory.IndexDefault {
		ns.IndexKind = memory.IndexHNSW
	}
	if ns.IndexKind == memory.IndexHNSW {
		ns.M = cmpOr(ns.M, DefaultM)
		ns.EfConstruction = cmpOr(ns.EfConstruction, DefaultEfConstruction)
		ns.EfSearch = cmpOr(ns.EfSearch, DefaultEfSearch)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("create namespace: %w", err)
	}
	defer tx.Rollback(ctx)
	if s.quota.Namespaces > 0 {
		if err := s.lockTenant(ctx, tx, tenant); err != nil {
			return memory.Namespace{}, fmt.Errorf("create namespace: %w", err)
		}
		used, err := s.usage(ctx, tx, tenant)
		if err != nil {
			return memory.Namespace{}, fmt.Errorf("create namespace: %w", err)
		}
		if err := s.quota.Check(used, memory.Usage{Namespaces: 1}); err != nil {
			return memory.Namespace{}, fmt.Errorf("create namespace %q: %w", ns.Name, err)
		}
	}
	row, err := scanNS(tx.QueryRow(ctx, `INSERT INTO `+s.ns+` (tenant, name, dimension, metric, embedder_provider, embedder_model, index_kind, m, ef_construction, ef_search, description, create_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, date_trunc('milliseconds', now()))
		ON CONFLICT (tenant, name) DO NOTHING RETURNING `+nsColumns,
		tenant, ns.Name, ns.Dimension, int(ns.Metric), ns.EmbedderProvider, ns.EmbedderModel, int(ns.IndexKind), ns.M, ns.EfConstruction, ns.EfSearch, ns.Description))
	if errors.Is(err, pgx.ErrNoRows) {
		return memory.Namespace{}, fmt.Errorf("create namespace %q: %w", ns.Name, memory.ErrAlreadyExists)
	}
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("create namespace: %w", err)
	}
	base, t := row.table(), s.records(row)
	stmts := []string{
		fmt.Sprintf(`CREATE TABLE %s (
			id text PRIMARY KEY,
			text text NOT NULL DEFAULT '',
			embedding vector(%d) NOT NULL,
			metadata jsonb NOT NULL DEFAULT '{}',
			tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED,
			expire_time timestamptz,
			update_time timestamptz NOT NULL)`, t, ns.Dimension),
		fmt.Sprintf("CREATE INDEX %s_metadata ON %s USING gin (metadata jsonb_path_ops)", base, t),
		fmt.Sprintf("CREATE INDEX %s_tsv ON %s USING gin (tsv)", base, t),
	}
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			return memory.Namespace{}, fmt.Errorf("create namespace table: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return memory.Namespace{}, fmt.Errorf("create namespace: %w", err)
	}
	s.db.Wrote(ctx)
	return row.meta, nil
}

func cmpOr(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// GetNamespace implements memory.Store. It reads from the read replica when the caller may (see sqldb.DB.Read).
func (s *Store) GetNamespace(ctx context.Context, tenant, name string, withStats bool) (ns memory.Namespace, err error) {
	err = s.db.Read(ctx, func(pool *pgxpool.Pool) error {
		ns, err = s.getNamespace(ctx, pool, tenant, name, withStats)
		return err
	})
	return ns, err
}

func (s *Store) getNamespace(ctx context.Context, pool *pgxpool.Pool, tenant, name string, withStats bool) (memory.Namespace, error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("get namespace: %w", err)
	}
	defer tx.Rollback(ctx)
	row, err := s.lookup(ctx, tx, tenant, name)
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("get namespace: %w", err)
	}
	ns := row.meta
	if !withStats {
		return ns, nil
	}
	err = tx.QueryRow(ctx, "SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0) FROM "+s.records(row)+" t WHERE "+alive).
		Scan(&ns.Stats.RecordCount, &ns.Stats.SizeBytes)
	if err != nil {
		return memory.Namespace{}, fmt.Errorf("get namespace stats: %w", err)
	}
	return ns, nil
}

const alive = "(expire_time IS NULL OR expire_time > now())"

// ListNamespaces implements memory.Store. It reads from the read replica when the caller may.
func (s *Store) ListNamespaces(ctx context.Context, tenant, after string, limit int) (out []memory.Namespace, err error) {
	err = s.db.Read(ctx, func(pool *pgxpool.Pool) error {
		out, err = s.listNamespaces(ctx, pool, tenant, after, limit)
		return err
	})
	return out, err
}

func (s *Store) listNamespaces(ctx context.Context, pool *pgxpool.Pool, tenant, after string, limit int) ([]memory.Namespace, error) {
	rows, err := pool.Query(ctx, "SELECT "+nsColumns+" FROM "+s.ns+" WHERE tenant = $1 AND name > $2 ORDER BY name LIMIT $3", tenant, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	defer rows.Close()
	var out []memory.Namespace
	for rows.Next() {
		r, err := scanNS(rows)
		if err != nil {
			return nil, fmt.Errorf("list namespaces: %w", err)
		}
		out = append(out, r.meta)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	return out, nil
}

// DeleteNamespace implements memory.Store.
func (s *Store) DeleteNamespace(ctx context.Context, tenant, name string) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	defer tx.Rollback(ctx)
	var id int64
	err = tx.QueryRow(ctx, "DELETE FROM "+s.ns+" WHERE tenant = $1 AND name = $2 RETURNING id", tenant, name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("delete namespace %q: %w", name, memory.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	s.nsCache.Delete(nsKey(tenant, name))
	if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+s.records(nsRow{id: id})); err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	s.db.Wrote(ctx)
	return nil
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

const upsertSet = ` ON CONFLICT (id) DO UPDATE SET text = excluded.text, embedding = excluded.embedding,
	metadata = excluded.metadata, expire_time = excluded.expire_time, update_time = excluded.update_time`

// Upsert implements memory.Store.
//
// The batch's effect on the namespace's usage counters is measured in SQL, before and after the write, in the
// write's transaction; when it would take the tenant over its quota the transaction is rolled back, so nothing
// of the batch remains. Expired records count until removed: before refusing, Upsert removes the tenant's
// expired records and tries once more.
func (s *Store) Upsert(ctx context.Context, tenant, namespace string, records []memory.Record) error {
	err := s.upsert(ctx, tenant, namespace, records)
	if errors.Is(err, memory.ErrQuotaExceeded) {
		if purged, perr := s.purgeExpired(ctx, tenant); perr != nil {
			return fmt.Errorf("upsert: %w", perr)
		} else if purged {
			err = s.upsert(ctx, tenant, namespace, records)
		}
	}
	return err
}

func (s *Store) upsert(ctx context.Context, tenant, namespace string, records []memory.Record) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	defer tx.Rollback(ctx)
	if err := s.lockTenant(ctx, tx, tenant); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	// FOR UPDATE keeps the namespace from being deleted under the batch, and orders the writers of its usage
	// counters.
	row, err := scanNS(tx.QueryRow(ctx, "SELECT "+nsColumns+" FROM "+s.ns+" WHERE tenant = $1 AND name = $2 FOR UPDATE", tenant, namespace))
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("upsert: namespace %q: %w", namespace, memory.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	if err := memory.CheckRecords(row.meta, records); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	// The last record of an id wins; ON CONFLICT cannot touch one row twice in a statement.
	last := make(map[string]int, len(records))
	for i, r := range records {
		last[r.ID] = i
	}
	rows := make([][]any, 0, len(last))
	ids := make([]string, 0, len(last))
	for i, r := range records {
		if last[r.ID] != i {
			continue
		}
		ids = append(ids, r.ID)
		md, err := metadataJSON(r.Metadata)
		if err != nil {
			return fmt.Errorf("upsert: records[%d]: %w", i, err)
		}
		rows = append(rows, []any{r.ID, r.Text, pgvector.NewVector(r.Vector), string(md), nullTime(r.ExpireTime), r.UpdateTime})
	}
	t := s.records(row)
	measure := func() (n, b int64, err error) {
		err = tx.QueryRow(ctx, "SELECT count(*), coalesce(sum("+recordSize+"), 0) FROM "+t+" t WHERE t.id = ANY($1)", ids).Scan(&n, &b)
		if err != nil {
			return 0, 0, fmt.Errorf("upsert: measure: %w", err)
		}
		return n, b, nil
	}
	oldN, oldB, err := measure()
	if err != nil {
		return err
	}
	var used memory.Usage
	if s.quota != (memory.Quota{}) {
		if used, err = s.usage(ctx, tx, tenant); err != nil {
			return fmt.Errorf("upsert: %w", err)
		}
		// Refuse on the record count before writing anything; bytes are known only after the write.
		if err := s.quota.Check(used, memory.Usage{Records: int64(len(ids)) - oldN}); err != nil {
			return fmt.Errorf("upsert: %w", err)
		}
	}
	if len(rows) < copyThreshold {
		b := &pgx.Batch{}
		for _, r := range rows {
			b.Queue("INSERT INTO "+t+" (id, text, embedding, metadata, expire_time, update_time) VALUES ($1, $2, $3, $4::jsonb, $5, $6)"+upsertSet, r...)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("upsert: %w", err)
		}
	} else {
		if _, err := tx.Exec(ctx, `CREATE TEMP TABLE memory_upsert (id text, text text, embedding vector, metadata jsonb,
			expire_time timestamptz, update_time timestamptz) ON COMMIT DROP`); err != nil {
			return fmt.Errorf("upsert: %w", err)
		}
		for _, r := range rows {
			r[3] = []byte(r[3].(string))
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"memory_upsert"}, []string{"id", "text", "embedding", "metadata", "expire_time", "update_time"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("upsert: copy: %w", err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+t+" (id, text, embedding, metadata, expire_time, update_time) SELECT id, text, embedding, metadata, expire_time, update_time FROM memory_upsert"+upsertSet); err != nil {
			return fmt.Errorf("upsert: %w", err)
		}
	}
	newN, newB, err := measure()
	if err != nil {
		return err
	}
	add := memory.Usage{Records: newN - oldN, Bytes: newB - oldB}
	if err := s.quota.Check(used, add); err != nil {
		return fmt.Errorf("upsert: %w", err) // the deferred rollback undoes the whole batch
	}
	if err := s.addUsage(ctx, tx, row.id, add.Records, add.Bytes); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("upsert: %w", err)
	}
	s.db.Wrote(ctx)
	if hasHNSW(row.meta) {
		if _, ok := s.indexed.Load(row.id); !ok {
			if s.indexNow {
				return s.buildIndex(ctx, row, false)
			}
			s.scheduleBuild(row, true)
		}
	}
	return nil
}

// recordColumns are read by scanRecord, followed by the optional embedding.
const recordColumns = "id, text, metadata, expire_time, update_time"

func scanRecord(rows pgx.Rows, withVector bool, extra ...any) (memory.Record, error) {
	var r memory.Record
	var md []byte
	var exp *time.Time
	var vec pgvector.Vector
	dst := []any{&r.ID, &r.Text, &md, &exp, &r.UpdateTime}
	if withVector {
		dst = append(dst, &vec)
	}
	if err := rows.Scan(append(dst, extra...)...); err != nil {
		return memory.Record{}, err
	}
	if exp != nil {
		r.ExpireTime = *exp
	}
	if withVector {
		r.Vector = vec.Slice()
	}
	var err error
	r.Metadata, err = metadataFromJSON(md)
	return r, err
}

// Get implements memory.Store. It reads from the read replica when the caller may.
func (s *Store) Get(ctx context.Context, tenant, namespace string, ids []string, includeVectors bool) (out []memory.Record, err error) {
	err = s.db.Read(ctx, func(pool *pgxpool.Pool) error {
		out, err = s.get(ctx, pool, tenant, namespace, ids, includeVectors)
		return err
	})
	return out, err
}

func (s *Store) get(ctx context.Context, pool *pgxpool.Pool, tenant, namespace string, ids []string, includeVectors bool) ([]memory.Record, error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	defer tx.Rollback(ctx)
	row, err := s.lookup(ctx, tx, tenant, namespace)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	cols := recordColumns
	if includeVectors {
		cols += ", embedding"
	}
	rows, err := tx.Query(ctx, "SELECT "+cols+" FROM "+s.records(row)+" WHERE id = ANY($1) AND "+alive, ids)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	found := map[string]memory.Record{}
	for rows.Next() {
		r, err := scanRecord(rows, includeVectors)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("get: %w", err)
		}
		found[r.ID] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	var out []memory.Record
	for _, id := range ids {
		if r, ok := found[id]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// Delete implements memory.Store.
func (s *Store) Delete(ctx context.Context, tenant, namespace string, ids []string, filter *memory.Filter) (int64, error) {
	var where strings.Builder
	var a args
	if len(ids) > 0 {
		where.WriteString("id = ANY(" + a.add(ids) + ")")
	} else {
		if filter == nil {
			return 0, memory.Invalidf("selector", "ids or filter is required")
		}
		if err := memory.ValidateFilter("filter", filter); err != nil {
			return 0, fmt.Errorf("delete: %w", err)
		}
		if err := compileFilter(&where, &a, filter); err != nil {
			return 0, fmt.Errorf("delete: %w", err)
		}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	defer tx.Rollback(ctx)
	row, err := scanNS(tx.QueryRow(ctx, "SELECT "+nsColumns+" FROM "+s.ns+" WHERE tenant = $1 AND name = $2 FOR UPDATE", tenant, namespace))
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("delete: namespace %q: %w", namespace, memory.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	var n, all, b int64
	err = tx.QueryRow(ctx, "WITH d AS (DELETE FROM "+s.records(row)+" t WHERE "+where.String()+" RETURNING t.expire_time, "+recordSize+" AS size) SELECT count(*) FILTER (WHERE "+alive+"), count(*), coalesce(sum(size), 0) FROM d", a...).Scan(&n, &all, &b)
	if err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	if err := s.addUsage(ctx, tx, row.id, -all, -b); err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("delete: %w", err)
	}
	s.db.Wrote(ctx)
	return n, nil
}

// Search implements memory.Store.
//
// The namespace's catalog row comes from a cache (namespaces are immutable, and a deleted namespace's table is
// dropped, so a stale entry fails with undefined_table and is looked up again). The planner settings and the
// query go to the server as one pipeline, in one round trip, so the settings are local to its implicit
// transaction: hnsw.ef_search, hnsw.iterative_scan = relaxed_order, and enable_seqscan = off, without which the
// planner, working from stale statistics on a freshly loaded table, prefers a sequential scan and a sort (an
// exact scan, 20x slower than the index at 5k rows).
func (s *Store) Search(ctx context.Context, tenant, namespace string, q memory.Query) ([]memory.Hit, error) {
	if q.TopK <= 0 {
		return nil, memory.Invalidf("top_k", "must be positive")
	}
	if q.Hybrid && q.Text == "" {
		return nil, memory.Invalidf("hybrid", "needs a text query")
	}
	var where strings.Builder
	a := args{nil} // $1 is the query vector
	where.WriteString(alive)
	if q.Filter != nil {
		if err := memory.ValidateFilter("filter", q.Filter); err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		where.WriteString(" AND ")
		if err := compileFilter(&where, &a, q.Filter); err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
	}
	// The namespace's row comes from the cache, or a read; the query vector is computed (by q.Embed for a text
	// search) outside any read, so an embedding provider's failure is never taken for the replica's.
	var hits []memory.Hit
	var embeddedFor int64 // the namespace id q.Vector was embedded for
	embedded := false
	for attempt := 0; ; attempt++ {
		row, err := s.cachedLookup(ctx, tenant, namespace)
		if err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		if q.Embed != nil && (q.Vector == nil || embedded && embeddedFor != row.id) {
			if q.Vector, err = q.Embed(ctx, row.meta); err != nil {
				return nil, fmt.Errorf("search: %w", err)
			}
			embedded, embeddedFor = true, row.id
		}
		a[0] = pgvector.NewVector(q.Vector)
		mode := "exact"
		if q.Hybrid {
			mode = "hybrid"
		} else if hasHNSW(row.meta) {
			mode = "hnsw"
		}
		err = s.db.Read(ctx, func(pool *pgxpool.Pool) error {
			sctx, end := memory.StartSearch(ctx, s.observer, namespace, mode, q.TopK)
			var err error
			hits, err = s.search(sctx, pool, row, q, where.String(), a)
			end(len(hits), err)
			return err
		})
		var pgErr *pgconn.PgError
		if attempt == 0 && errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: stale cache
			s.nsCache.Delete(nsKey(tenant, namespace))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("search: %w", err)
		}
		return hits, nil
	}
}

func nsKey(tenant, name string) string { return tenant + "\x00" + name }

// cachedLookup returns a namespace's catalog row from the cache, or looks it up (on the read replica when the
// caller may) and caches it.
func (s *Store) cachedLookup(ctx context.Context, tenant, name string) (nsRow, error) {
	if v, ok := s.nsCache.Load(nsKey(tenant, name)); ok {
		return v.(nsRow), nil
	}
	var row nsRow
	err := s.db.Read(ctx, func(pool *pgxpool.Pool) error {
		var err error
		row, err = s.lookup(ctx, pool, tenant, name)
		return err
	})
	if err != nil {
		return nsRow{}, err
	}
	s.nsCache.Store(nsKey(tenant, name), row)
	return row, nil
}

func (s *Store) search(ctx context.Context, pool *pgxpool.Pool, row nsRow, q memory.Query, where string, a args) ([]memory.Hit, error) {
	if err := memory.CheckVector("vector", q.Vector, row.meta.Dimension, row.meta.Metric); err != nil {
		return nil, err
	}
	k := q.TopK
	if q.Hybrid {
		k = max(2*q.TopK, 50)
	}
	cols := recordColumns
	if q.IncludeVectors {
		cols += ", embedding"
	}
	op := opsOf(row.meta.Metric).distanceOp
	vsql := fmt.Sprintf(`WITH c AS MATERIALIZED (SELECT %s, embedding %s $1 AS distance FROM %s WHERE %s ORDER BY embedding %s $1 LIMIT %d)
		SELECT * FROM c ORDER BY distance, id`, cols, op, s.records(row), where, op, k)
	var tsql string
	ta := a
	if q.Hybrid {
		ta = append(a[:len(a):len(a)], q.Text)
		tq := fmt.Sprintf("plainto_tsquery('simple', $%d)", len(ta))
		tsql = fmt.Sprintf("SELECT %s, ts_rank(tsv, %s)::float8 AS rank FROM %s WHERE tsv @@ %s AND %s AND $1::vector IS NOT NULL ORDER BY rank DESC, id LIMIT %d",
			cols, tq, s.records(row), tq, where, k)
	}
	hnsw := hasHNSW(row.meta)
	var vhits, thits []memory.Hit
	var verr, terr error
	b := &pgx.Batch{}
	if _, ok := s.indexed.Load(row.id); hnsw && !ok {
		// Is the deferred index built yet? If not (and no build is pending, after a restart), schedule it.
		b.Queue("SELECT coalesce((SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)), false)", row.indexName()).
			QueryRow(func(r pgx.Row) error {
				var valid bool
				if err := r.Scan(&valid); err != nil {
					return err
				}
				if valid {
					s.indexed.Store(row.id, true)
				} else {
					s.scheduleBuild(row, false)
				}
				return nil
			})
	}
	if hnsw {
		ef := min(max(cmpOr(row.meta.EfSearch, DefaultEfSearch), k), 1000)
		// With a filter, bitmap scans are off too: the planner otherwise answers a 10% filter exactly through the
		// GIN index (8x slower than the iterative HNSW scan at 20k rows). Selective filters that the iterative scan
		// cannot satisfy within hnsw.max_scan_tuples fall back to the exact query below, GIN allowed.
		// JIT is off as well: with seqscan off, a namespace whose deferred index is not built yet is planned at
		// disabled-path cost, which makes the server JIT-compile the query (measured here: ~90 ms per search of a
		// 30-row table, against ~1 ms without).
		bitmap := "on"
		if q.Filter != nil {
			bitmap = "off"
		}
		b.Queue(`SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true),
			set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', $2, true), set_config('jit', 'off', true)`, strconv.Itoa(ef), bitmap)
	}
	b.Queue(vsql, a...).Query(func(rows pgx.Rows) error {
		vhits, verr = collectHits(rows, row.meta.Metric, q.IncludeVectors)
		return verr
	})
	if q.Hybrid {
		b.Queue(tsql, ta...).Query(func(rows pgx.Rows) error {
			thits, terr = collectHits(rows, row.meta.Metric, q.IncludeVectors)
			return terr
		})
	}
	if err := pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	if hnsw && len(vhits) < k {
		// The index scan stopped early (hnsw.max_scan_tuples) or fewer than k rows match: answer exactly, so a
		// filter never silently returns fewer rows than exist.
		b := &pgx.Batch{}
		b.Queue("SELECT set_config('enable_indexscan', 'off', true)")
		b.Queue(vsql, a...).Query(func(rows pgx.Rows) error {
			vhits, verr = collectHits(rows, row.meta.Metric, q.IncludeVectors)
			return verr
		})
		if err := pool.SendBatch(ctx, b).Close(); err != nil {
			return nil, err
		}
	}
	if !q.Hybrid {
		if q.MinScore != nil {
			cut := 0
			for cut < len(vhits) && vhits[cut].Score >= *q.MinScore {
				cut++
			}
			vhits = vhits[:cut]
		}
		return vhits, nil
	}
	return fuse(q.TopK, vhits, thits), nil
}

func collectHits(rows pgx.Rows, m memory.Metric, withVector bool) ([]memory.Hit, error) {
	var hits []memory.Hit
	for rows.Next() {
		var d float64
		r, err := scanRecord(rows, withVector, &d)
		if err != nil {
			return nil, err
		}
		hits = append(hits, memory.Hit{Record: r, Score: score(m, d)})
	}
	return hits, rows.Err()
}

// fuse merges two ranked lists by reciprocal rank fusion and returns the k best.
func fuse(k int, lists ...[]memory.Hit) []memory.Hit {
	scores := map[string]float64{}
	recs := map[string]memory.Record{}
	for _, l := range lists {
		for rank, h := range l {
			scores[h.Record.ID] += 1 / float64(memory.RRFK+rank+1)
			recs[h.Record.ID] = h.Record
		}
	}
	out := make([]memory.Hit, 0, len(scores))
	for id, sc := range scores {
		out = append(out, memory.Hit{Record: recs[id], Score: float32(sc)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Score != out[j].Score {
			return out[i].Score > out[j].Score
		}
		return out[i].Record.ID < out[j].Record.ID
	})
	return out[:min(k, len(out))]
}
