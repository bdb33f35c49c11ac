package sqldb

// Read replicas.
//
// With Options.ReadURL, Open also opens a pgx pool on a streaming replica of the primary, and the reads that
// components route through [DB.Read], [DB.Reader] or [DB.ReadPool] go to it when three conditions hold, checked
// in this order:
//
//   - the replica is up: its last check succeeded, and no read has failed on it since;
//   - it lags the primary by at most Options.ReadMaxLag;
//   - it has replayed the last write of the caller (read-your-writes).
//
// Otherwise the read goes to the primary, and loom_db_reads_total{target="primary",reason=...} says why.
//
// Positions. A goroutine, the tracker, samples the primary's WAL flush position and then the replica's replay
// position (pg_last_wal_replay_lsn), at most every replicaRefresh while reads or writes ask for it and not at all
// while the process is idle. Every primary sample is numbered by an epoch counter, incremented just before the
// sample is taken. A write pays no round trip: after its commit, [DB.Wrote] stores for the caller the number of
// the next epoch. That sample starts after the commit returned, so the position it reads is at or past the
// commit record (commits are synchronous: the flush position covers them). The tracker publishes the newest
// epoch whose position the replica has replayed; a read compares the caller's epoch with it: a map lookup, no
// round trip.
//
// Lag is the age of the oldest primary sample the replica has not replayed yet, zero when it has replayed them
// all, however long the primary has been idle (now() - pg_last_xact_replay_timestamp(), by contrast, grows on an
// idle primary). Between checks a read bounds the lag by the last measured lag plus the time since that check,
// so a tracker that stopped checking cannot hide a replica that stopped replaying.
//
// Callers. The caller is the principal in the context (tenant and subject); contexts without one share the
// anonymous caller. The map of callers is bounded: an entry goes once the replica has replayed it, and beyond
// maxCallers the oldest write is dropped and its epoch folded into a floor that every caller then waits for
// (conservative: a dropped entry can send reads to the primary, never to a replica that lacks the write).
//
// The tracking is per process: a caller whose write went through another Loom process is not known here.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/loom-dev/loom/internal/principal"
)

// DefaultReadMaxLag is how far a replica may lag the primary before reads leave it, when Options.ReadMaxLag is
// zero.
const DefaultReadMaxLag = 5 * time.Second

const (
	// replicaRefresh is the shortest time between two checks of the replica's position while reads keep asking.
	replicaRefresh = 5 * time.Millisecond
	// replicaRetry is the time between checks while the replica is down.
	replicaRetry = 500 * time.Millisecond
	// replicaCheckTimeout bounds one check (both queries).
	replicaCheckTimeout = 2 * time.Second
	// replicaConnectTimeout bounds a connection attempt to the replica when its URL sets no connect_timeout: reads
	// fall back to the primary rather than wait out the caller's deadline on an unreachable host.
	replicaConnectTimeout = 2 * time.Second
	// maxCallers bounds the callers whose last write the replica has not replayed yet.
	maxCallers = 1 << 16
	// maxSamples bounds the primary positions kept while the replica lags; with samples at least maxLag/256
	// apart they cover 16 times the lag bound, so dropping the oldest never hides a lag within the bound.
	maxSamples = 4096
)

// readReason says where a read went and why.
type readReason int

const (
	readReplica       readReason = iota // served by the replica
	readUnknown                         // the replica's state is not known yet, or too old to trust
	readDown                            // the replica's last check failed
	readLagging                         // the replica lags more than ReadMaxLag
	readYourWrites                      // the replica has not replayed the caller's last write
	readReplicaFailed                   // the read failed on the replica and ran again on the primary
	numReadReasons
)

var readReasonLabels = [numReadReasons]string{
	readReplica:       "ok",
	readUnknown:       "replica_unknown",
	readDown:          "replica_down",
	readLagging:       "replica_lagging",
	readYourWrites:    "read_your_writes",
	readReplicaFailed: "replica_error",
}

// caller identifies whose writes a read must see.
type caller struct{ tenant, subject string }

func callerOf(ctx context.Context) caller {
	p, ok := principal.FromContext(ctx)
	if !ok {
		return caller{}
	}
	return caller{p.Tenant, p.Subject}
}

// replicaState is what the tracker last learned. Immutable once published.
type replicaState struct {
	at         time.Time     // when the check ended
	err        error         // why the replica is considered down; nil when it is up
	replayed   uint64        // the newest epoch whose primary position the replica has replayed
	lag        time.Duration // measured at at
	replayLSN  uint64        // the replica's replay position, in bytes
	primaryLSN uint64        // the primary's flush position at the check, in bytes
}

// sample is a primary WAL position, first seen at at, and the newest epoch that read it.
type sample struct {
	epoch uint64
	lsn   uint64
	at    time.Time
}

type write struct {
	who   caller
	epoch uint64
}

// replica routes reads between a streaming replica and the primary. It is shared by every view of a DB.
type replica struct {
	pool    *pgxpool.Pool
	sqlDB   *sql.DB
	primary *pgxpool.Pool
	maxLag  time.Duration

	epoch atomic.Uint64 // the number of the latest primary sample started
	state atomic.Pointer[replicaState]
	kick  chan struct{}
	stop  context.CancelFunc
	done  chan struct{}

	mu      sync.Mutex
	callers map[caller]uint64 // the epoch each caller's reads wait for
	writes  []write           // in the order recorded, for pruning; writes[head:] are live
	head    int
	floor   uint64 // the epoch every caller waits for: that of the newest write dropped for room

	samples []sample // the tracker's only

	reads    *prometheus.CounterVec
	counters [numReadReasons]prometheus.Counter
	gauges   []prometheus.Collector
}

func openReplica(o Options, primary *pgxpool.Pool, prefix string) (*replica, error) {
	connURL, readPrefix, err := splitPrefix(o.ReadURL)
	if err != nil {
		return nil, fmt.Errorf("open read replica: %w", err)
	}
	if readPrefix != prefix {
		return nil, fmt.Errorf("open read replica: %s %q differs from the primary's %q", SchemaPrefixParam, readPrefix, prefix)
	}
	cfg, err := poolConfig(connURL, o.MaxConns)
	if err != nil {
		return nil, fmt.Errorf("open read replica: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = replicaConnectTimeout
	}
	// No ping: a replica that is down when the process starts is a replica that is down (reads use the primary
	// until a check finds it up), not a reason to refuse to start.
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("open read replica: %w", err)
	}
	maxLag := o.ReadMaxLag
	if maxLag <= 0 {
		maxLag = DefaultReadMaxLag
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{
		pool: pool, sqlDB: stdlib.OpenDBFromPool(pool), primary: primary, maxLag: maxLag,
		kick: make(chan struct{}, 1), stop: cancel, done: make(chan struct{}),
		callers: map[caller]uint64{},
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_db_reads_total",
			Help: "Reads routable to the read replica, by where they were served (replica or primary) and why (ok when served by the replica).",
		}, []string{"target", "reason"}),
	}
	for reason, label := range readReasonLabels {
		target := "primary"
		if readReason(reason) == readReplica {
			target = "replica"
		}
		r.counters[reason] = r.reads.WithLabelValues(target, label)
	}
	r.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "loom_db_replica_up",
			Help: "1 if the read replica's last check succeeded, 0 otherwise.",
		}, func() float64 {
			if st := r.state.Load(); st != nil && st.err == nil {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "loom_db_replica_lag_seconds",
			Help: "How far the read replica's replay lagged the primary at its last check.",
		}, func() float64 {
			if st := r.state.Load(); st != nil {
				return st.lag.Seconds()
			}
			return 0
		}),
	}
	go r.run(ctx)
	r.wake()
	return r, nil
}

func (r *replica) close() {
	r.stop()
	<-r.done
	r.sqlDB.Close()
	r.pool.Close()
}

// wake asks the tracker for a check; the tracker runs at most one every replicaRefresh (replicaRetry while the
// replica is down).
func (r *replica) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *replica) run(ctx context.Context) {
	defer close(r.done)
	pause := time.NewTimer(0)
	<-pause.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		wait := replicaRefresh
		if !r.check(ctx) {
			wait = replicaRetry
		}
		pause.Reset(wait)
		select {
		case <-ctx.Done():
			pause.Stop()
			return
		case <-pause.C:
		}
	}
}

// check samples the primary's position, then the replica's, publishes the new state and forgets the writes the
// replica has replayed. It reports whether the replica is up.
func (r *replica) check(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, replicaCheckTimeout)
	defer cancel()
	epoch := r.epoch.Add(1)
	start := time.Now()
	var primaryLSN int64
	primaryErr := r.primary.QueryRow(cctx, "SELECT (pg_current_wal_flush_lsn() - '0/0')::int8").Scan(&primaryLSN)
	var standby bool
	var replay *int64
	err := r.pool.QueryRow(cctx, "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0')::int8").Scan(&standby, &replay)
	if ctx.Err() != nil {
		return false // closing
	}
	st := &replicaState{at: time.Now()}
	if prev := r.state.Load(); prev != nil {
		st.replayed, st.lag, st.replayLSN, st.primaryLSN = prev.replayed, prev.lag, prev.replayLSN, prev.primaryLSN
	}
	if primaryErr == nil {
		// A primary that does not answer leaves the samples as they are: the replica keeps serving the callers
		// whose writes it has replayed.
		r.addSample(epoch, uint64(primaryLSN), start)
		st.primaryLSN = uint64(primaryLSN)
	}
	switch {
	case err != nil:
		st.err = fmt.Errorf("check read replica: %w", err)
	case !standby || replay == nil:
		st.err = errors.New("check read replica: the server is not a standby (pg_is_in_recovery() is false)")
	default:
		st.replayLSN = uint64(*replay)
		st.replayed, st.lag = r.advance(st.replayLSN, st.replayed, st.at)
	}
	r.state.Store(st)
	if st.err == nil {
		r.forget(st.replayed)
	}
	return st.err == nil
}

// addSample records the primary's position lsn, read by epoch's sample started at at. Samples closer together
// than maxLag/256 are merged into the older one's time and the newer one's epoch and position, which can only
// overstate the lag (by at most maxLag/256) and delay a caller's return to the replica (by one sample).
func (r *replica) addSample(epoch, lsn uint64, at time.Time) {
	if n := len(r.samples); n > 0 {
		last := &r.samples[n-1]
		if lsn <= last.lsn || at.Sub(last.at) < r.maxLag/256 {
			last.epoch, last.lsn = epoch, max(last.lsn, lsn)
			return
		}
	}
	r.samples = append(r.samples, sample{epoch: epoch, lsn: lsn, at: at})
	if len(r.samples) > maxSamples {
		r.samples = append(r.samples[:0], r.samples[1:]...)
	}
}

// advance drops the samples the replica has replayed (its replay position is replay) and returns the newest
// replayed epoch (replayed if none is newer) and the lag at now.
func (r *replica) advance(replay, replayed uint64, now time.Time) (uint64, time.Duration) {
	i := 0
	for i < len(r.samples) && r.samples[i].lsn <= replay {
		replayed = max(replayed, r.samples[i].epoch)
		i++
	}
	r.samples = append(r.samples[:0], r.samples[i:]...)
	if len(r.samples) == 0 {
		return replayed, 0
	}
	return replayed, now.Sub(r.samples[0].at)
}

// wrote records that who's write committed: its reads wait for the next epoch's position to be replayed.
func (r *replica) wrote(who caller) {
	need := r.epoch.Load() + 1
	r.mu.Lock()
	if need > r.callers[who] {
		r.callers[who] = need
		r.writes = append(r.writes, write{who, need})
		if len(r.writes)-r.head > maxCallers {
			w := r.writes[r.head]
			r.head++
			if r.callers[w.who] == w.epoch {
				delete(r.callers, w.who)
				r.floor = max(r.floor, w.epoch)
			}
		}
		r.compact()
	}
	r.mu.Unlock()
	r.wake()
}

// forget drops the writes the replica has replayed (every epoch up to replayed).
func (r *replica) forget(replayed uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Writes are recorded in nearly increasing epoch order (two writers can load the counter and append in
	// opposite orders); one that is out of order waits for the next check.
	for r.head < len(r.writes) && r.writes[r.head].epoch <= replayed {
		w := r.writes[r.head]
		r.writes[r.head] = write{}
		r.head++
		if r.callers[w.who] == w.epoch {
			delete(r.callers, w.who)
		}
	}
	r.compact()
}

func (r *replica) compact() {
	if r.head > 0 && r.head >= len(r.writes)/2 {
		n := copy(r.writes, r.writes[r.head:])
		clear(r.writes[n:])
		r.writes, r.head = r.writes[:n], 0
	}
}

// waitsFor returns the epoch who's reads must see replayed.
func (r *replica) waitsFor(who caller) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return max(r.callers[who], r.floor)
}

// pick decides where a read by the caller in ctx goes; readReplica means the replica.
func (r *replica) pick(ctx context.Context) readReason {
	st := r.state.Load()
	if st == nil {
		r.wake()
		return readUnknown
	}
	if st.err != nil {
		r.wake()
		return readDown
	}
	age := time.Since(st.at)
	if age >= replicaRefresh {
		r.wake()
	}
	switch {
	case st.lag > r.maxLag:
		return readLagging
	case st.lag+age > r.maxLag:
		// Lag grows at most as fast as time: a state this old no longer proves the replica is close enough. A
		// replica that was behind at that check is presumed still behind; one that was not, merely unknown.
		if st.lag > 0 {
			return readLagging
		}
		return readUnknown
	case r.waitsFor(callerOf(ctx)) > st.replayed:
		r.wake()
		return readYourWrites
	}
	return readReplica
}

// failed handles err, returned by a read on the replica: it reports whether the read should run again on the
// primary (the replica or the connection to it failed, or replay cancelled the query), and marks the replica
// down when the failure was the server's or the network's rather than one query's.
func (r *replica) failed(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	down := false
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &pgErr):
		switch {
		case pgErr.Code == "40001", pgErr.Code == "40P01", pgErr.Code == "57P04":
			// A recovery conflict (replay needed what the query held) or the database was dropped under it.
		case strings.HasPrefix(pgErr.Code, "08"), pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", pgErr.Code == "53300":
			down = true // connection failure, shutdown, crash, starting up, too many connections
		default:
			return false // the query's own error: the primary would answer the same
		}
	case errors.As(err, &connErr), errors.As(err, &netErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		pgconn.Timeout(err), pgconn.SafeToRetry(err):
		down = true
	default:
		return false
	}
	if down {
		prev := r.state.Load()
		st := &replicaState{at: time.Now(), err: fmt.Errorf("read on replica: %w", err)}
		if prev != nil {
			st.replayed, st.lag, st.replayLSN, st.primaryLSN = prev.replayed, prev.lag, prev.replayLSN, prev.primaryLSN
		}
		r.state.Store(st)
		r.wake()
	}
	return true
}

func (r *replica) count(reason readReason) { r.counters[reason].Inc() }

// Read runs fn, a read, with the pool that serves the caller in ctx: the replica (see Options.ReadURL) when it
// is up, close enough and has replayed the caller's last write, the primary otherwise. If fn fails on the replica
// because the replica or the connection to it failed, or because replay cancelled the query, Read runs fn again
// on the primary, so a replica going away fails no call; fn must therefore only read, and may run twice. Without
// a replica (and on SQLite, where Pool is nil) fn gets db.Pool.
func (db *DB) Read(ctx context.Context, fn func(pool *pgxpool.Pool) error) error {
	r := db.replica
	if r == nil {
		return fn(db.Pool)
	}
	if reason := r.pick(ctx); reason != readReplica {
		r.count(reason)
		return fn(db.Pool)
	}
	err := fn(r.pool)
	if !r.failed(ctx, err) {
		r.count(readReplica)
		return err
	}
	r.count(readReplicaFailed)
	return fn(db.Pool)
}

// ReadPool returns the pool that serves a read by the caller in ctx, chosen as by [DB.Read], for code that cannot
// pass a function; a failure on the replica is then the caller's to handle. It is db.Pool without a replica.
func (db *DB) ReadPool(ctx context.Context) *pgxpool.Pool {
	r := db.replica
	if r == nil {
		return db.Pool
	}
	reason := r.pick(ctx)
	r.count(reason)
	if reason == readReplica {
		return r.pool
	}
	return db.Pool
}

// Wrote records that the caller in ctx has just committed a write: until the replica has replayed it, that
// caller's reads go to the primary. Call it after the commit returned, with the context of the call that wrote;
// it costs no round trip. It does nothing without a replica.
func (db *DB) Wrote(ctx context.Context) {
	if db.replica != nil {
		db.replica.wrote(callerOf(ctx))
	}
}

// Reader returns database/sql access for the reads of one operation by the caller in ctx, routed as by
// [DB.Read]: QueryContext runs on the replica or on the primary, and a query that fails on the replica (as
// described for Read) runs again on the primary, where the Reader's later queries then stay, so a sequence of
// queries never sees an older state than an earlier one of the sequence. ExecContext always runs on the primary.
// Without a replica every query runs on db.DB. A Reader is for one goroutine and one operation: pick a new one
// per call, so that it sees the caller's latest writes.
func (db *DB) Reader(ctx context.Context) *Reader {
	rd := &Reader{db: db, reason: readReplica}
	if db.replica != nil {
		rd.reason = db.replica.pick(ctx)
	}
	return rd
}

// Reader runs the queries of one read operation; see [DB.Reader].
type Reader struct {
	db     *DB
	reason readReason // readReplica while the Reader uses the replica
}

// QueryContext runs a query that only reads, on the replica or the primary.
func (rd *Reader) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	r := rd.db.replica
	if r == nil {
		return rd.db.DB.QueryContext(ctx, query, args...)
	}
	if rd.reason == readReplica {
		rows, err := r.sqlDB.QueryContext(ctx, query, args...)
		if !r.failed(ctx, err) {
			r.count(readReplica)
			return rows, err
		}
		rd.reason = readReplicaFailed
	}
	r.count(rd.reason)
	return rd.db.DB.QueryContext(ctx, query, args...)
}

// ExecContext runs a statement on the primary.
func (rd *Reader) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return rd.db.DB.ExecContext(ctx, query, args...)
}

// ReplicaStatus is the read replica's state as last checked.
type ReplicaStatus struct {
	// Configured reports whether the database has a read replica (Options.ReadURL); the other fields are zero
	// when it has not.
	Configured bool
	// CheckedAt is when the state was last learned (zero before the first check).
	CheckedAt time.Time
	// Err is why the replica is considered down; nil when it is up.
	Err error
	// Lag is how far the replica's replay lagged the primary at CheckedAt.
	Lag time.Duration
	// ReplayLSN and PrimaryLSN are the replica's replay position and the primary's flush position, in bytes.
	ReplayLSN, PrimaryLSN uint64
}

// ReplicaStatus returns the read replica's state as last checked.
func (db *DB) ReplicaStatus() ReplicaStatus {
	r := db.replica
	if r == nil {
		return ReplicaStatus{}
	}
	st := r.state.Load()
	if st == nil {
		return ReplicaStatus{Configured: true}
	}
	return ReplicaStatus{Configured: true, CheckedAt: st.at, Err: st.err, Lag: st.lag, ReplayLSN: st.replayLSN, PrimaryLSN: st.primaryLSN}
}

// ReadMetrics returns the collector of the read-routing metrics: loom_db_reads_total{target, reason} (target
// "replica" with reason "ok", or "primary" with reason replica_unknown, replica_down, replica_lagging,
// read_your_writes or replica_error), loom_db_replica_up and loom_db_replica_lag_seconds. It collects nothing
// without a replica. Register it once, for the root handle (every view shares it).
func (db *DB) ReadMetrics() prometheus.Collector { return readMetrics{db.replica} }

type readMetrics struct{ r *replica }

func (m readMetrics) Describe(ch chan<- *prometheus.Desc) {
	if m.r == nil {
		return
	}
	m.r.reads.Describe(ch)
	for _, g := range m.r.gauges {
		g.Describe(ch)
	}
}

func (m readMetrics) Collect(ch chan<- prometheus.Metric) {
	if m.r == nil {
		return
	}
	m.r.reads.Collect(ch)
	for _, g := range m.r.gauges {
		g.Collect(ch)
	}
}
