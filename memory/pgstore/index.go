package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Deferred HNSW index builds.
//
// Inserting into a table that already has an HNSW index costs a graph search per row (measured here: about 90x
// slower than COPY first and CREATE INDEX after). So a namespace's records table is created without its HNSW
// index; the index is built once writes go quiet: IndexDelay after the last Upsert (or at once by BuildIndexes,
// the call to make after a bulk load). Until the index exists, searches are exact sequential scans: correct,
// slower. Once it exists, later writes maintain it incrementally, which is fine for the trickle of a live
// namespace; a large reload is better written to a new namespace. Chosen over building at a row threshold
// (which still pays incremental inserts for every row after the threshold) and over dropping and rebuilding
// the index per large batch (the RPC caps batches at memory.MaxBatch = 1000 rows, far below a reload).
//
// A background build uses CREATE INDEX CONCURRENTLY so writers are never blocked; BuildIndexes uses a plain
// CREATE INDEX (faster; writers to that namespace wait, readers do not). Builds run with maintenance_work_mem =
// BuildMemory so the graph is built in memory. If the process stops first, the next Search of the namespace
// finds the index missing and schedules the build again.
const (
	// IndexDelay is how long a namespace's writes must be quiet before its HNSW index is built in the background.
	IndexDelay = 2 * time.Second
	// BuildMemory is maintenance_work_mem for index builds: enough for a 100k x 768 graph in memory.
	BuildMemory = "1GB"
)

// buildLockClass is the first key of the advisory lock held while building a namespace's index.
const buildLockClass int32 = 74382910

// indexName is the unqualified name of row's HNSW index (an index lives in its table's schema).
func (r nsRow) indexName() string { return r.table() + "_hnsw" }

// scheduleBuild arms row's background index build IndexDelay from now; rearm pushes back one already pending.
func (s *Store) scheduleBuild(row nsRow, rearm bool) {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	if s.closed {
		return
	}
	if s.pending == nil {
		s.pending = map[int64]nsRow{}
	}
	s.pending[row.id] = row
	if t, ok := s.builds[row.id]; ok {
		if rearm {
			t.Reset(IndexDelay)
		}
		return
	}
	s.builds[row.id] = time.AfterFunc(IndexDelay, func() {
		s.buildMu.Lock()
		if s.closed || s.builds[row.id] == nil {
			s.buildMu.Unlock()
			return
		}
		delete(s.builds, row.id)
		delete(s.pending, row.id)
		s.buildWG.Add(1)
		s.buildMu.Unlock()
		defer s.buildWG.Done()
		_ = s.buildIndex(s.buildCtx, row, true) // a failed build is retried by the next write or search
	})
}

// BuildIndexes builds, now, every HNSW index whose deferred build is pending (after a bulk load, for example),
// and returns when they are ready. Writes to those namespaces wait during the build; searches do not.
func (s *Store) BuildIndexes(ctx context.Context) error {
	s.buildMu.Lock()
	rows := make([]nsRow, 0, len(s.pending))
	for id, row := range s.pending {
		if t := s.builds[id]; t != nil {
			t.Stop()
		}
		delete(s.builds, id)
		delete(s.pending, id)
		rows = append(rows, row)
	}
	s.buildMu.Unlock()
	var errs []error
	for _, row := range rows {
		errs = append(errs, s.buildIndex(ctx, row, false))
	}
	return errors.Join(errs...)
}

// buildIndex creates row's HNSW index unless it exists.
func (s *Store) buildIndex(ctx context.Context, row nsRow, concurrently bool) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("build index: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET maintenance_work_mem = '"+BuildMemory+"'"); err != nil {
		return fmt.Errorf("build index: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), "RESET maintenance_work_mem") }()
	// One builder per namespace at a time, across processes; the loser finds the index there.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1, $2)", buildLockClass, int32(row.id)); err != nil {
		return fmt.Errorf("build index: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1, $2)", buildLockClass, int32(row.id))
	}()
	mode := ""
	if concurrently {
		mode = "CONCURRENTLY "
	}
	_, err = conn.Exec(ctx, fmt.Sprintf("CREATE INDEX %sIF NOT EXISTS %s ON %s USING hnsw (embedding %s) WITH (m = %d, ef_construction = %d)",
		mode, row.indexName(), s.records(row), opsOf(row.meta.Metric).opsClass, cmpOr(row.meta.M, DefaultM), cmpOr(row.meta.EfConstruction, DefaultEfConstruction)))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // the namespace was deleted
		return nil
	}
	if err != nil {
		if concurrently { // a failed concurrent build leaves an invalid index behind
			_, _ = conn.Exec(context.Background(), "DROP INDEX CONCURRENTLY IF EXISTS "+s.db.Table(row.indexName()))
		}
		return fmt.Errorf("build index: %w", err)
	}
	s.indexed.Store(row.id, true)
	return nil
}
