// Package engine runs blueprints durably: runs survive crashes and are shared between replicas.
//
// A run is a row, one row per step, and an append-only event log whose per-run sequence has no gaps. One replica
// owns an unfinished run at a time, under a lease it heartbeats (runs.owner, runs.lease_until), and executes its
// blueprint in memory: ready steps run as goroutines of the owner, and each batch of outcomes (a step's output or
// failure, the steps it makes ready, their events and the run state) is one transaction, fenced on the owner and
// the run's last sequence so a replica that lost its lease writes nothing. A group committer writes the
// outcomes of concurrent runs in one transaction. Branch conditions and the output expression are evaluated by
// the owner, never inside a transaction.
//
// The runs table is the queue. A replica claims runs that are due and whose lease has lapsed (after a crash),
// in batches; it wakes on its own writes (StartRun, SubmitApproval) and polls as a fallback. A run with nothing
// to do for a while (an approval, a long delay or backoff) is released with a due time and claimed again then.
// A step found running when a run is claimed (its attempt was cut short) runs again: agent calls carry an
// idempotency key made of the run, the step and the count of recorded failures, so the agent service returns
// the first result instead of running again.
//
// SQLite (embedded) serves one process: at Start it takes over every unfinished run at once. Postgres serves any
// number of replicas. Both need the orchestrator schema applied first (sqlstore.New migrates it); New keeps
// River's tables migrated for a rollback to the release that queued steps as River jobs.
//
// This package does not import connect: errors are the orchestrator package's sentinels.
package engine

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/telemetry"
	"github.com/loom-dev/loom/orchestrator"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// Config tunes an Engine. The zero value is usable: every zero field takes its default.
type Config struct {
	// Workers is how many steps (agent, memory and map calls) execute at once in this process; 0 means 128.
	Workers int
	// MaxRuns is how many unfinished runs this process owns at once; 0 means 1000. Runs beyond it wait in the
	// database for this or another replica.
	MaxRuns int
	// FetchPollInterval is how often the engine looks for runs to claim when nothing woke it: runs started by
	// other processes, released runs that came due, and runs whose owner died; 0 means 1s. A run started or
	// approved in this process is claimed at once.
	FetchPollInterval time.Duration
	// LeaseDuration is how long a replica owns a run without renewing its lease; 0 means 3s. The lease is
	// renewed every third of it while the replica lives, however long a step takes, so only a dead (or
	// partitioned) replica loses its runs: another one resumes them after at most LeaseDuration plus
	// FetchPollInterval.
	LeaseDuration time.Duration
	// RescueStuckJobsAfter is ignored: the lease decides failover. It is kept so older configuration compiles.
	//
	// Deprecated: use LeaseDuration.
	RescueStuckJobsAfter time.Duration
	// Expressions bounds what each blueprint expression may cost at run time; the zero value takes every default
	// (blueprint.DefaultLimits).
	Expressions blueprint.Limits
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// TracerProvider traces the execution of steps: each attempt of an agent, map or memory step is a span
	// "step <kind>" in the trace of the StartRun call that created the run (its context is stored with the run,
	// so this holds on whichever replica executes the step, also after a takeover), and the step's calls are its
	// children. Nil means no tracing, at no cost.
	TracerProvider trace.TracerProvider
	// EventRetention is how long run events are kept; 0 keeps them forever. Events of unfinished runs are never
	// removed: see [Engine.MaintainEvents]. On Postgres whole partitions (UTC days) are dropped, so an event may
	// outlive the bound by up to a day; on SQLite old events are deleted in batches. A value below
	// MinEventRetention is raised to it.
	EventRetention time.Duration
	// EventMaintenanceInterval is how often a started engine makes the coming days' event partitions (Postgres)
	// and applies EventRetention; 0 means 1h.
	EventMaintenanceInterval time.Duration
	// Metrics, when not nil, count finished runs and time steps, and read the queue lag and the pending
	// approvals from this Engine's database (see [Metrics]). Nil means no metrics.
	Metrics *Metrics
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 128
	}
	if c.MaxRuns <= 0 {
		c.MaxRuns = 1000
	}
	if c.FetchPollInterval <= 0 {
		c.FetchPollInterval = time.Second
	}
	if c.LeaseDuration <= 0 {
		c.LeaseDuration = 3 * time.Second
	}
	if c.EventRetention > 0 {
		c.EventRetention = max(c.EventRetention, MinEventRetention)
	}
	if c.EventMaintenanceInterval <= 0 {
		c.EventMaintenanceInterval = time.Hour
	}
	c.Expressions = c.Expressions.WithDefaults()
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Engine executes runs. It implements orchestrator.Runs and is safe for concurrent use. Call Start to begin
// executing runs and Stop to finish.
type Engine struct {
	logger *slog.Logger
	db     *sqldb.DB
	agents agentv1.AgentServiceClient
	memory memoryv1.MemoryServiceClient
	cfg    Config
	// id names this replica in runs.owner.
	id string

	progs programs
	stmts stmtCache
	live  live // the watchers in this process
	// upgradedUntil is the end of the range of the partition run_events_upgraded (Postgres; 0 without one): the
	// events stored before partitions existed have that partition's time, whatever their run's.
	upgradedUntil int64
	wake          chan struct{}

	commitMu      sync.Mutex
	queue         []*commitReq // waiting for a leader
	committing    int          // transactions open
	maxCommitters int
	sem           chan struct{}

	mu       sync.Mutex
	owned    map[string]*ownedRun
	started  bool
	draining chan struct{} // closed by Stop
	stopped  bool
	cancel   context.CancelFunc // of every loop and step
	loops    sync.WaitGroup     // claim and heartbeat loops
	actors   sync.WaitGroup     // owned runs
	base     context.Context    // of the loops and steps
}

var _ orchestrator.Runs = (*Engine)(nil)

// New returns an Engine over db with [NewPostgres] or [NewSQLite], as db's dialect says.
func New(ctx context.Context, logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) (*Engine, error) {
	if db.Dialect == sqldb.Postgres {
		return NewPostgres(ctx, logger, db, agents, memory, cfg)
	}
	return NewSQLite(ctx, logger, db, agents, memory, cfg)
}

// NewSQLite returns an Engine that keeps runs in the SQLite database db (already migrated by sqlstore.New).
func NewSQLite(ctx context.Context, logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) (*Engine, error) {
	if db.Dialect != sqldb.SQLite {
		return nil, fmt.Errorf("engine: NewSQLite needs a SQLite database, got %s", db.Dialect)
	}
	if err := migrateRiver(ctx, riversqlite.New(db.DB), ""); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	return newEngine(logger, db, agents, memory, cfg), nil
}

// NewPostgres returns an Engine over Postgres: db (already migrated by sqlstore.New) serves reads through
// database/sql, and its pgx pool carries every write, all in the orchestrator's schema.
func NewPostgres(ctx context.Context, logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) (*Engine, error) {
	if db.Dialect != sqldb.Postgres {
		return nil, fmt.Errorf("engine: NewPostgres needs a Postgres database, got %s", db.Dialect)
	}
	db = db.Component(sqldb.OrchestratorComponent)
	var err error
	// Replicas starting together would race to create River's types and triggers.
	if err := db.Locked(ctx, func(ctx context.Context) error { return migrateRiver(ctx, riverpgxv5.New(db.Pool), db.Schema) }); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	e := newEngine(logger, db, agents, memory, cfg)
	// The partitions of today and the coming days exist before the first event is written.
	if _, err := e.MaintainEvents(ctx); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if e.upgradedUntil, err = e.upgradedPartitionEnd(ctx); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	return e, nil
}

// migrateRiver keeps River's tables at their current version, although the engine no longer queues steps as
// River jobs: the release before this one did, and a rollback to it needs them (its queued jobs stay there).
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

func newEngine(logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) *Engine {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	cfg = cfg.withDefaults()
	e := &Engine{logger: logger, db: db, agents: agents, memory: memory, cfg: cfg, id: "r-" + hex.EncodeToString(b[:]),
		wake: make(chan struct{}, 1), sem: make(chan struct{}, cfg.Workers),
		owned: map[string]*ownedRun{}, draining: make(chan struct{}), maxCommitters: 1}
	if db.Dialect == sqldb.Postgres {
		e.maxCommitters = 4 // SQLite has one connection; Postgres overlaps four transactions
	}
	cfg.Metrics.bind(e)
	return e
}

// Start begins claiming and executing runs, starting with the unfinished runs it finds (on SQLite all of them,
// at once; on Postgres those whose lease has lapsed). It returns at once. Runs make progress only while some
// process has a started Engine over the same database.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return errors.New("engine: already started")
	}
	e.started = true
	e.base, e.cancel = context.WithCancel(context.WithoutCancel(ctx))
	e.loops.Add(3)
	go e.claimLoop(e.base)
	go e.heartbeatLoop(e.base)
	go e.maintainLoop(e.base)
	return nil
}

// Stop stops claiming runs, lets the steps in flight finish until ctx ends (then cancels them), and releases
// this replica's leases so another replica resumes its runs at once.
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	if !e.started || e.stopped {
		e.mu.Unlock()
		return nil
	}
	e.stopped = true
	close(e.draining)
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.actors.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	e.cancel()
	<-done
	e.loops.Wait()
	relCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// lease_until becomes the time of the release: claimable at once, and what the queue lag counts from.
	if _, err := e.writer().exec(relCtx, `UPDATE loom.runs SET owner = '', lease_until = ? WHERE owner = ? AND end_time = 0`, e.now().UnixMicro(), e.id); err != nil {
		return fmt.Errorf("engine: release leases: %w", err)
	}
	return nil
}

func (e *Engine) reader() querier { return sqlQuerier{db: e.db, q: e.db.DB} }

// writer runs single statements outside a transaction: on the pgx pool on Postgres.
func (e *Engine) writer() querier {
	if e.db.Dialect == sqldb.Postgres {
		return pgxQuerier{db: e.db, tx: e.db.Pool}
	}
	return sqlQuerier{db: e.db, q: e.db.DB}
}

// replicaReader reads for the caller in ctx from the read replica when it may (see sqldb.DB.Reader): for reads
// that can be slightly stale, except for the caller's own writes. One per operation.
func (e *Engine) replicaReader(ctx context.Context) querier {
	return sqlQuerier{db: e.db, q: e.db.Reader(ctx)}
}

func (e *Engine) now() time.Time { return e.cfg.Now().UTC() }

func newRunID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "run_" + hex.EncodeToString(b[:])
}

// requestHash identifies what a StartRun asked for: the blueprint, its version and the input.
func requestHash(bp *orchestratorv1.Blueprint, input *structpb.Struct) (string, error) {
	in, err := marshal(input)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00", bp.GetName(), bp.GetVersion())
	h.Write(in)
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// StartRun implements orchestrator.Runs. The first steps are dispatched in the transaction that creates the run;
// a started Engine owns the run from that commit on and executes it at once. A reused idempotency key returns
// the first run when the request is the same (blueprint, version and input), and ErrAlreadyExists naming the key
// when it is not.
func (e *Engine) StartRun(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, input *structpb.Struct, key string) (*orchestratorv1.WorkflowRun, error) {
	if input == nil {
		input = &structpb.Struct{}
	}
	if err := checkSchema(bp.GetInputSchema(), structpb.NewStructValue(input), "input"); err != nil {
		return nil, fmt.Errorf("start run: %w: %w", orchestrator.ErrInvalidArgument, err)
	}
	hash, err := requestHash(bp, input)
	if err != nil {
		return nil, fmt.Errorf("start run: %w", err)
	}
	if key != "" {
		if r, err := e.runByKey(ctx, e.reader(), tenant, key, hash); err == nil || !errors.Is(err, errNoRows) {
			return r, err
		}
	}
	id := newRunID()
	// The run keeps its own copy of the blueprint with every agent version it will run recorded in it.
	if bp, err = e.pinAgents(ctx, tenant, id, bp); err != nil {
		return nil, fmt.Errorf("start run: %w", err)
	}
	now := e.now()
	r := newRun(id, tenant, bp, input, key, now)
	r.requestHash = hash
	if err := r.setTraceContext(telemetry.Inject(ctx)); err != nil {
		return nil, fmt.Errorf("start run: %w", err)
	}
	r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunStarted{
		RunStarted: &orchestratorv1.RunStarted{BlueprintVersion: bp.GetVersion()}}}, now)
	e.advance(r, now) // expressions are evaluated here, before the transaction
	own := e.accepting()
	var lease int64
	if own {
		// This process executes the first steps as soon as the run is committed: their attempts go in the same
		// transaction. Otherwise whoever claims the run records them.
		r.leaseOwner, lease = e.id, now.Add(e.cfg.LeaseDuration).UnixMicro()
		e.recordAttempts(r, now)
	}
	err = e.inTx(ctx, func(tx *txn) error {
		if err := insertRun(ctx, tx, r, lease); err != nil {
			return err
		}
		stmts, err := r.changes(tx.dialect())
		if err != nil {
			return err
		}
		return tx.execAll(ctx, stmts)
	})
	if err != nil && key != "" {
		// A concurrent StartRun with the same key won the unique index: return its run.
		if existing, kerr := e.runByKey(ctx, e.reader(), tenant, key, hash); kerr == nil || errors.Is(kerr, orchestrator.ErrAlreadyExists) {
			e.db.Wrote(ctx) // the run is a few moments old: the caller's next reads must see it too
			return existing, kerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("start run: %w", err)
	}
	r.savedSeq = r.lastSeq
	e.db.Wrote(ctx)
	e.live.committed(tenant, r.id)
	if r.terminal() {
		e.cfg.Metrics.runFinished(r.state) // it ended in advance, before any step ran
	}
	out := r.proto()
	if own {
		e.adopt(r)
	} else {
		e.signal()
	}
	return out, nil
}

func (e *Engine) runByKey(ctx context.Context, q querier, tenant, key, hash string) (*orchestratorv1.WorkflowRun, error) {
	var id, stored string
	if err := queryRow(ctx, q, `SELECT id, request_hash FROM loom.runs WHERE tenant = ? AND idempotency_key = ?`, []any{tenant, key}, &id, &stored); err != nil {
		if errors.Is(err, errNoRows) {
			return nil, err
		}
		return nil, fmt.Errorf("start run: %w", err)
	}
	if stored != "" && stored != hash {
		return nil, fmt.Errorf("start run: idempotency key %q was used by a run of another blueprint, version or input: %w", key, orchestrator.ErrAlreadyExists)
	}
	r, err := loadRun(ctx, q, tenant, id, false)
	if err != nil {
		return nil, fmt.Errorf("start run: %w", err)
	}
	return r.proto(), nil
}

// GetRun implements orchestrator.Runs.
func (e *Engine) GetRun(ctx context.Context, tenant, id string) (*orchestratorv1.WorkflowRun, error) {
	r, err := loadRun(ctx, e.replicaReader(ctx), tenant, id, false)
	if err != nil {
		return nil, fmt.Errorf("get run %q: %w", id, notFound(err))
	}
	return r.proto(), nil
}

func notFound(err error) error {
	if errors.Is(err, errNoRows) {
		return orchestrator.ErrNotFound
	}
	return err
}

type runPage struct {
	Time int64  `json:"t"`
	ID   string `json:"i"`
}

// ListRuns implements orchestrator.Runs. Runs are listed newest first, without their steps.
func (e *Engine) ListRuns(ctx context.Context, tenant, blueprint string, state orchestratorv1.RunState, pageSize int, pageToken string) ([]*orchestratorv1.WorkflowRun, string, error) {
	pageSize = max(pageSize, 1)
	var after runPage
	if err := decodeToken(pageToken, "runs", &after); err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	q := `SELECT ` + runColumns + ` FROM loom.runs WHERE tenant = ?`
	args := []any{tenant}
	if blueprint != "" {
		q += ` AND blueprint = ?`
		args = append(args, blueprint)
	}
	if state != orchestratorv1.RunState_RUN_STATE_UNSPECIFIED {
		q += ` AND state = ?`
		args = append(args, int64(state))
	}
	if pageToken != "" {
		q += ` AND (create_time < ? OR (create_time = ? AND id < ?))`
		args = append(args, after.Time, after.Time, after.ID)
	}
	q += ` ORDER BY create_time DESC, id DESC LIMIT ?`
	args = append(args, pageSize+1)
	rs, done, err := e.replicaReader(ctx).query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	defer done()
	runs := make([]*orchestratorv1.WorkflowRun, 0, pageSize)
	next, err := sqldb.ReadPage(rs, pageSize, "runs", func(rs rows) (runPage, error) {
		r, err := scanRun(rs)
		if errors.Is(err, errCorrupt) {
			// One undecodable record must not take the tenant's whole list down: skip it (DeleteRun removes it).
			e.logger.ErrorContext(ctx, "engine: list runs: skipping a stored run", slog.String("run", r.id), slog.Any("error", err))
			return runPage{Time: r.created, ID: r.id}, nil
		}
		if err != nil {
			return runPage{}, err
		}
		runs = append(runs, r.proto())
		return runPage{Time: r.created, ID: r.id}, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	return runs, next, nil
}

// CancelRun implements orchestrator.Runs. ErrFailedPrecondition if the run already finished. The owner
// cancels the steps in flight when it sees the run ended: at once in this process, within a heartbeat
// (LeaseDuration/3) on another replica.
func (e *Engine) CancelRun(ctx context.Context, tenant, id, reason string) (*orchestratorv1.WorkflowRun, error) {
	var r *run
	err := e.inTx(ctx, func(tx *txn) error {
		var err error
		r, err = loadRun(ctx, tx, tenant, id, true)
		if err != nil {
			return notFound(err)
		}
		if r.terminal() {
			return fmt.Errorf("run %q already ended (%s): %w", id, r.state, orchestrator.ErrFailedPrecondition)
		}
		now := e.now()
		r.end(orchestratorv1.RunState_RUN_STATE_CANCELLED, reason, now)
		r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunCancelled{
			RunCancelled: &orchestratorv1.RunCancelled{Reason: reason, Usage: r.usage()}}}, now)
		return save(ctx, tx, r, time.Time{})
	})
	if err != nil {
		return nil, fmt.Errorf("cancel run %q: %w", id, err)
	}
	e.db.Wrote(ctx)
	e.live.committed(tenant, id)
	e.cfg.Metrics.runFinished(r.state)
	e.poke(id)
	return r.proto(), nil
}

// DeleteRun deletes a finished run with its steps and events. ErrNotFound if absent; ErrFailedPrecondition if
// the run has not ended (cancel it first). A run whose stored record no longer decodes can be deleted too.
func (e *Engine) DeleteRun(ctx context.Context, tenant, id string) error {
	err := e.inTx(ctx, func(tx *txn) error {
		lock := ""
		if tx.dialect() == sqldb.Postgres {
			lock = " FOR UPDATE"
		}
		var state, ended, created int64
		if err := queryRow(ctx, tx, `SELECT state, end_time, create_time FROM loom.runs WHERE id = ? AND tenant = ?`+lock, []any{id, tenant}, &state, &ended, &created); err != nil {
			return notFound(err)
		}
		if !isTerminal(orchestratorv1.RunState(state)) && ended == 0 {
			return fmt.Errorf("run %q is %s: cancel it first: %w", id, orchestratorv1.RunState(state), orchestrator.ErrFailedPrecondition)
		}
		return tx.execAll(ctx, []stmt{
			{`DELETE FROM loom.run_events WHERE run_id = ? AND event_time >= ?`, []any{id, created}},
			{`DELETE FROM loom.run_steps WHERE run_id = ?`, []any{id}},
			{`DELETE FROM loom.runs WHERE id = ?`, []any{id}},
		})
	})
	if err != nil {
		return fmt.Errorf("delete run %q: %w", id, err)
	}
	e.db.Wrote(ctx)
	return nil
}

// Events implements orchestrator.Runs: up to limit events after afterSequence, and whether the run had ended
// before they were read (so an empty result with ended set means there will be no more).
func (e *Engine) Events(ctx context.Context, tenant, id string, afterSequence int64, limit int) ([]*orchestratorv1.WatchRunResponse, bool, error) {
	// One reader for both queries: the events are read from the same server as the state, or a newer one.
	rd := e.replicaReader(ctx)
	var state, created, ended int64
	if err := queryRow(ctx, rd, `SELECT state, create_time, end_time FROM loom.runs WHERE id = ? AND tenant = ?`, []any{id, tenant}, &state, &created, &ended); err != nil {
		return nil, false, fmt.Errorf("run events %q: %w", id, notFound(err))
	}
	// On Postgres the time bounds skip the partitions of the days outside the run's life (see eventTimeRange).
	from, to := e.eventTimeRange(created, ended)
	rs, done, err := rd.query(ctx,
		`SELECT event FROM loom.run_events WHERE run_id = ? AND event_time >= ? AND event_time <= ? AND sequence > ? ORDER BY sequence LIMIT ?`,
		id, from, to, afterSequence, max(limit, 1))
	if err != nil {
		return nil, false, fmt.Errorf("run events %q: %w", id, err)
	}
	defer done()
	var out []*orchestratorv1.WatchRunResponse
	for rs.Next() {
		var b []byte
		if err := rs.Scan(&b); err != nil {
			return nil, false, fmt.Errorf("run events %q: %w", id, err)
		}
		ev := &orchestratorv1.WatchRunResponse{}
		if err := proto.Unmarshal(b, ev); err != nil {
			return nil, false, fmt.Errorf("run events %q: %w", id, err)
		}
		out = append(out, ev)
	}
	if err := rs.Err(); err != nil {
		return nil, false, fmt.Errorf("run events %q: %w", id, err)
	}
	return out, isTerminal(orchestratorv1.RunState(state)), nil
}

type approvalPage struct {
	Time int64  `json:"t"`
	Run  string `json:"r"`
	Step string `json:"s"`
}

// waitingState is STEP_STATE_WAITING as a literal, the condition of the partial index run_steps_waiting
// (migration 00007), which a bound parameter would not let the planner use.
const waitingState = "3"

// ListPendingApprovals implements orchestrator.Runs: waiting approval steps, oldest first.
func (e *Engine) ListPendingApprovals(ctx context.Context, tenant, runID string, pageSize int, pageToken string) ([]*orchestratorv1.Approval, string, error) {
	pageSize = max(pageSize, 1)
	var after approvalPage
	if err := decodeToken(pageToken, "approvals", &after); err != nil {
		return nil, "", fmt.Errorf("list approvals: %w", err)
	}
	q := `SELECT s.run_id, s.step_id, s.start_time, s.deadline, r.blueprint, r.definition
		FROM loom.run_steps s JOIN loom.runs r ON r.id = s.run_id
		WHERE r.tenant = ? AND s.state = ` + waitingState + ``
	args := []any{tenant}
	if runID != "" {
		q += ` AND s.run_id = ?`
		args = append(args, runID)
	}
	if pageToken != "" {
		q += ` AND (s.start_time > ? OR (s.start_time = ? AND (s.run_id > ? OR (s.run_id = ? AND s.step_id > ?))))`
		args = append(args, after.Time, after.Time, after.Run, after.Run, after.Step)
	}
	q += ` ORDER BY s.start_time, s.run_id, s.step_id LIMIT ?`
	args = append(args, pageSize+1)
	rs, done, err := e.reader().query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list approvals: %w", err)
	}
	defer done()
	var out []*orchestratorv1.Approval
	next, err := sqldb.ReadPage(rs, pageSize, "approvals", func(rs rows) (approvalPage, error) {
		var (
			runID, stepID, bpName string
			start, deadline       int64
			def                   []byte
		)
		if err := rs.Scan(&runID, &stepID, &start, &deadline, &bpName, &def); err != nil {
			return approvalPage{}, err
		}
		bp := &orchestratorv1.Blueprint{}
		if err := proto.Unmarshal(def, bp); err != nil {
			return approvalPage{}, err
		}
		a := &orchestratorv1.Approval{RunId: runID, StepId: stepID, Blueprint: bpName,
			Deadline: micros(deadline), CreateTime: micros(start)}
		for _, s := range bp.GetSteps() {
			if s.GetId() == stepID {
				a.Prompt, a.PayloadSchema = s.GetApproval().GetPrompt(), s.GetApproval().GetPayloadSchema()
			}
		}
		out = append(out, a)
		return approvalPage{Time: start, Run: runID, Step: stepID}, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list approvals: %w", err)
	}
	return out, next, nil
}

// SubmitApproval implements orchestrator.Runs. ErrFailedPrecondition if the step is not waiting;
// ErrInvalidArgument if an approval's payload does not match the step's schema. It records the decision and makes
// the run due; the run's owner then starts what the approval made ready, evaluating any expressions outside this
// transaction.
func (e *Engine) SubmitApproval(ctx context.Context, tenant, runID, stepID string, decision orchestratorv1.Decision, payload *structpb.Struct, comment string) (*orchestratorv1.WorkflowRun, error) {
	var r *run
	err := e.inTx(ctx, func(tx *txn) error {
		var err error
		r, err = loadRun(ctx, tx, tenant, runID, true)
		if err != nil {
			return notFound(err)
		}
		s := r.byID[stepID]
		if s == nil {
			return fmt.Errorf("step %q: %w", stepID, orchestrator.ErrNotFound)
		}
		if s.def.GetApproval() == nil || s.state != orchestratorv1.StepState_STEP_STATE_WAITING || r.terminal() {
			return fmt.Errorf("step %q is not waiting for an approval (%s): %w", stepID, s.state, orchestrator.ErrFailedPrecondition)
		}
		now := e.now()
		switch decision {
		case orchestratorv1.Decision_DECISION_APPROVE:
			if payload == nil {
				payload = &structpb.Struct{}
			}
			if err := checkSchema(s.def.GetApproval().GetPayloadSchema(), structpb.NewStructValue(payload), "payload"); err != nil {
				return fmt.Errorf("%w: %w", orchestrator.ErrInvalidArgument, err)
			}
			r.succeed(s, structpb.NewStructValue(payload), now)
			r.state = orchestratorv1.RunState_RUN_STATE_RUNNING
		case orchestratorv1.Decision_DECISION_REJECT:
			msg := "rejected"
			if comment != "" {
				msg += ": " + comment
			}
			r.failStep(s, msg, now)
		default:
			return fmt.Errorf("decision %s: %w", decision, orchestrator.ErrInvalidArgument)
		}
		return save(ctx, tx, r, now)
	})
	if err != nil {
		return nil, fmt.Errorf("submit approval: %w", err)
	}
	e.db.Wrote(ctx)
	e.live.committed(tenant, runID)
	if r.terminal() {
		e.cfg.Metrics.runFinished(r.state) // rejected
	}
	e.poke(runID)
	return r.proto(), nil
}

// decodeToken parses a page token of kind into v; a bad token is orchestrator.ErrInvalidPageToken.
func decodeToken(token, kind string, v any) error {
	if err := pagetoken.Decode(kind, token, v); err != nil {
		return orchestrator.ErrInvalidPageToken
	}
	return nil
}

func micros(us int64) *timestamppb.Timestamp {
	if us == 0 {
		return nil
	}
	return timestamppb.New(time.UnixMicro(us))
}
