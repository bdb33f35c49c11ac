package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/loom-dev/loom/internal/sqldb"
)

// Run events are kept by time. On Postgres loom.run_events is partitioned by range of event_time, one partition
// per UTC day, named run_events_YYYYMMDD (and run_events_upgraded, which holds what the release before
// partitions stored: every time up to the end of the day it was upgraded). The engine creates the partitions
// ahead, and retention drops whole partitions. On SQLite retention deletes events in batches.
//
// Retention never removes an event of an unfinished run: every event of a run is at least as new as the run
// (event_time is clamped to its create_time), so nothing at or after the creation time of the oldest unfinished
// run is removed. What is removed is what is older than both that and the retention bound: whole partitions on
// Postgres (a partition whose range ends by then), single events on SQLite.

const (
	// eventPartitionWidth is the time range of one partition of run_events (Postgres).
	eventPartitionWidth = 24 * time.Hour
	// eventPartitionsAhead is how many days after today have their partition made in advance.
	eventPartitionsAhead = 7
	// retentionBatch is how many events one SQLite retention transaction deletes.
	retentionBatch = 1000
	// MinEventRetention is the shortest retention Config.EventRetention accepts.
	MinEventRetention = time.Hour
)

// EventMaintenance reports what one pass of [Engine.MaintainEvents] did.
type EventMaintenance struct {
	// Created names the partitions made (Postgres).
	Created []string
	// Dropped names the partitions dropped by retention (Postgres).
	Dropped []string
	// Deleted counts the events deleted by retention (SQLite).
	Deleted int64
	// Bound is the time before which events were removed (zero when retention is off or removed nothing).
	Bound time.Time
}

// eventClockSlack is how far apart the clocks of two replicas may be for reads of a finished run's events to
// find them all: an event's time comes from the clock of the replica that wrote it, the run's end time from the
// one that ended it. Leases already need the clocks within a fraction of LeaseDuration; this is far wider.
const eventClockSlack = time.Hour

// eventTimeRange bounds the event_time of a run's events, from the run's creation and end (0: not ended), so
// that reads on Postgres skip the partitions of other days: no event is older than its run (run.changes clamps
// it), none newer than its end (or, while it runs, now) plus eventClockSlack, except those stored before
// partitions, which lie in run_events_upgraded.
func (e *Engine) eventTimeRange(created, ended int64) (int64, int64) {
	if ended == 0 {
		// Nothing written yet is newer than now, give or take the slack; skips the partitions made ahead.
		return created, max(e.now().Add(eventClockSlack).UnixMicro(), e.upgradedUntil)
	}
	return created, max(ended+eventClockSlack.Microseconds(), e.upgradedUntil)
}

// upgradedPartitionEnd reads the end of run_events_upgraded's range from the catalog, 0 when there is none.
func (e *Engine) upgradedPartitionEnd(ctx context.Context) (int64, error) {
	var bound *string
	if err := e.db.Pool.QueryRow(ctx, `SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.oid = to_regclass($1)`,
		e.db.Table("run_events_upgraded")).Scan(&bound); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("run_events_upgraded: %w", err)
	}
	if bound == nil {
		return 0, nil
	}
	m := boundRE.FindStringSubmatch(*bound)
	if m == nil {
		return 0, fmt.Errorf("run_events_upgraded: unexpected bound %q", *bound)
	}
	return parseBound(m[2])
}

// MaintainEvents makes the partitions of the next days (Postgres) and applies Config.EventRetention, once. The
// engine runs it when it is made and every Config.EventMaintenanceInterval while started; replicas on one
// database take turns (a pass that finds another replica's pass running does nothing).
func (e *Engine) MaintainEvents(ctx context.Context) (EventMaintenance, error) {
	if e.db.Dialect != sqldb.Postgres {
		return e.retainSQLite(ctx)
	}
	var rep EventMaintenance
	conn, err := e.db.Pool.Acquire(ctx)
	if err != nil {
		return rep, fmt.Errorf("maintain events: %w", err)
	}
	defer conn.Release()
	lockKey := e.db.Schema + ".run_events"
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, lockKey).Scan(&locked); err != nil {
		return rep, fmt.Errorf("maintain events: %w", err)
	}
	if !locked {
		return rep, nil
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext($1))`, lockKey)
	}()

	parts, err := e.eventPartitions(ctx, conn.Conn())
	if err != nil {
		return rep, fmt.Errorf("maintain events: %w", err)
	}
	// Finish a drop cut short (DETACH ... CONCURRENTLY interrupted between its two transactions).
	for _, p := range parts {
		if p.pending {
			if err := e.dropPartition(ctx, conn.Conn(), p.name, true); err != nil {
				return rep, fmt.Errorf("maintain events: %w", err)
			}
			rep.Dropped = append(rep.Dropped, p.name)
		}
	}
	parts = slices.DeleteFunc(parts, func(p partition) bool { return p.pending })

	now := e.now()
	day := now.Truncate(eventPartitionWidth) // UTC days: Unix time has no leap seconds
	for d := -1; d <= eventPartitionsAhead; d++ {
		from := day.Add(time.Duration(d) * eventPartitionWidth)
		lo, hi := from.UnixMicro(), from.Add(eventPartitionWidth).UnixMicro()
		if slices.ContainsFunc(parts, func(p partition) bool { return p.from < hi && lo < p.to }) {
			continue
		}
		name := "run_events_" + from.Format("20060102")
		if err := e.createPartition(ctx, conn.Conn(), name, lo, hi); err != nil {
			return rep, fmt.Errorf("maintain events: %w", err)
		}
		parts = append(parts, partition{name: name, from: lo, to: hi})
		rep.Created = append(rep.Created, name)
	}

	bound, ok, err := e.retentionBound(ctx, now)
	if err != nil || !ok {
		return rep, err
	}
	for _, p := range parts {
		if p.to > bound.UnixMicro() {
			continue
		}
		if err := e.dropPartition(ctx, conn.Conn(), p.name, false); err != nil {
			return rep, fmt.Errorf("maintain events: %w", err)
		}
		rep.Dropped = append(rep.Dropped, p.name)
		rep.Bound = bound
	}
	if len(rep.Dropped) > 0 {
		e.logger.InfoContext(ctx, "engine: run event retention dropped partitions", slog.Any("partitions", rep.Dropped), slog.Time("before", bound))
	}
	return rep, nil
}

// retentionBound is the time before which events may be removed: the retention bound, or the creation time of
// the oldest unfinished run if that is earlier. ok is false when retention is off.
func (e *Engine) retentionBound(ctx context.Context, now time.Time) (time.Time, bool, error) {
	if e.cfg.EventRetention <= 0 {
		return time.Time{}, false, nil
	}
	bound := now.Add(-e.cfg.EventRetention).UnixMicro()
	var oldest *int64
	if err := queryRow(ctx, e.reader(), `SELECT MIN(create_time) FROM loom.runs WHERE end_time = 0`, nil, &oldest); err != nil {
		return time.Time{}, false, fmt.Errorf("event retention: oldest unfinished run: %w", err)
	}
	if oldest != nil {
		bound = min(bound, *oldest)
	}
	return time.UnixMicro(bound).UTC(), true, nil
}

// retainSQLite deletes the events older than the retention bound, retentionBatch at a time, each batch its own
// transaction so writers wait for one batch at most.
func (e *Engine) retainSQLite(ctx context.Context) (EventMaintenance, error) {
	var rep EventMaintenance
	bound, ok, err := e.retentionBound(ctx, e.now())
	if err != nil || !ok {
		return rep, err
	}
	for {
		n, err := e.writer().exec(ctx, `DELETE FROM loom.run_events WHERE rowid IN (
			SELECT rowid FROM loom.run_events WHERE event_time < ? LIMIT ?)`, bound.UnixMicro(), retentionBatch)
		if err != nil {
			return rep, fmt.Errorf("event retention: %w", err)
		}
		rep.Deleted += n
		if n < retentionBatch {
			break
		}
	}
	if rep.Deleted > 0 {
		rep.Bound = bound
		e.logger.InfoContext(ctx, "engine: run event retention deleted events", slog.Int64("events", rep.Deleted), slog.Time("before", bound))
	}
	return rep, nil
}

// maintainLoop runs MaintainEvents at once and then every EventMaintenanceInterval, until the engine stops.
func (e *Engine) maintainLoop(ctx context.Context) {
	defer e.loops.Done()
	tick := time.NewTicker(e.cfg.EventMaintenanceInterval)
	defer tick.Stop()
	for {
		if _, err := e.MaintainEvents(ctx); err != nil && ctx.Err() == nil {
			e.logger.WarnContext(ctx, "engine: maintain run events", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-e.draining:
			return
		case <-tick.C:
		}
	}
}

// partition is one partition of run_events: its name and range [from, to) of event_time.
type partition struct {
	name     string
	from, to int64
	pending  bool // detached concurrently, not finalized
}

var boundRE = regexp.MustCompile(`FROM \((.+)\) TO \((.+)\)`)

func parseBound(s string) (int64, error) {
	switch s = strings.Trim(s, "'"); s {
	case "MINVALUE":
		return math.MinInt64, nil
	case "MAXVALUE":
		return math.MaxInt64, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

// eventPartitions lists the partitions of run_events with their ranges, from the catalog.
func (e *Engine) eventPartitions(ctx context.Context, conn *pgx.Conn) ([]partition, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = to_regclass($1)`, e.db.Table("run_events"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []partition
	for rows.Next() {
		var (
			p     partition
			bound string
		)
		if err := rows.Scan(&p.name, &bound, &p.pending); err != nil {
			return nil, err
		}
		m := boundRE.FindStringSubmatch(bound)
		if m == nil {
			return nil, fmt.Errorf("partition %s: unexpected bound %q", p.name, bound)
		}
		var err1, err2 error
		p.from, err1 = parseBound(m[1])
		p.to, err2 = parseBound(m[2])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("partition %s: bound %q: %w", p.name, bound, err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// partitionLockTimeout bounds how long a partition's creation or drop waits for its locks: a statement waiting
// for a lock makes every later query on the table wait behind it. A pass that times out is retried by the next.
const partitionLockTimeout = "2s"

// createPartition makes the partition [lo, hi) as a table of its own and attaches it, which locks run_events in
// SHARE UPDATE EXCLUSIVE mode only: reads and inserts go on meanwhile.
func (e *Engine) createPartition(ctx context.Context, conn *pgx.Conn, name string, lo, hi int64) error {
	parent, table := e.db.Table("run_events"), e.db.Table(name)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	for _, q := range []string{
		`SET LOCAL lock_timeout = '` + partitionLockTimeout + `'`,
		`CREATE TABLE ` + table + ` (LIKE ` + parent + ` INCLUDING DEFAULTS)`,
		fmt.Sprintf(`ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%d) TO (%d)`, parent, table, lo, hi),
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("create partition %s: %w", name, err)
		}
	}
	return tx.Commit(ctx)
}

// dropPartition detaches a partition without blocking reads and writes of run_events (DETACH ... CONCURRENTLY)
// and drops it; finalize completes a detach that was cut short.
func (e *Engine) dropPartition(ctx context.Context, conn *pgx.Conn, name string, finalize bool) error {
	parent, table := e.db.Table("run_events"), e.db.Table(name)
	if _, err := conn.Exec(ctx, `SET lock_timeout = '`+partitionLockTimeout+`'`); err != nil {
		return err
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `RESET lock_timeout`) }()
	mode := "CONCURRENTLY"
	if finalize {
		mode = "FINALIZE"
	}
	if _, err := conn.Exec(ctx, `ALTER TABLE `+parent+` DETACH PARTITION `+table+` `+mode); err != nil {
		return fmt.Errorf("detach partition %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, `DROP TABLE `+table); err != nil {
		return fmt.Errorf("drop partition %s: %w", name, err)
	}
	return nil
}
