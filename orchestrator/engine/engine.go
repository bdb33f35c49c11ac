// Package engine runs blueprints durably on River job queues: runs survive crashes and are shared between
// replicas.
//
// A run is a row, one row per step, and an append-only event log whose per-run sequence has no gaps (it is
// allocated from the run row in the same transaction that appends the event). Each ready step that does work
// (agent, memory_search, memory_upsert, map, delay) is one River job. A step's outcome, the run state, the events
// and the jobs of the steps it makes ready are written in one transaction that also completes the step's job
// (river.JobCompleteTx), so a crash at any point neither loses a completed step nor runs its successors twice.
// A job that is rescued after a crash re-executes its step; agent calls carry an idempotency key made of the run,
// the step and the count of recorded failures (not River's attempt counter), so the agent service returns the
// first result instead of running again. Branch, parallel and approval steps are decided inside the transaction
// that makes them ready; approvals wait for [Engine.SubmitApproval] or their deadline (an expiry job).
//
// SQLite (embedded) uses River's riversqlite driver on the same database/sql handle; Postgres uses riverpgxv5
// on a pgx pool. Both need the orchestrator schema applied first (sqlstore.New migrates it); New applies River's
// own migrations.
//
// This package does not import connect: errors are the orchestrator package's sentinels.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/riverqueue/river"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/orchestrator"
)

// Config tunes an Engine. The zero value is usable: every zero field takes its default.
type Config struct {
	// Workers is how many step jobs run at once in this process; 0 means 16.
	Workers int
	// FetchPollInterval is how often idle workers look for jobs; 0 means 200ms on Postgres (where new jobs also
	// wake workers through LISTEN/NOTIFY) and 50ms on SQLite (which has no notifications, so the poll interval
	// bounds the latency between steps). Lower means less latency and more idle CPU: on SQLite 10ms costs about
	// 11% of a core while idle, 50ms about 4%.
	FetchPollInterval time.Duration
	// RescueStuckJobsAfter is how long a running job may go without finishing before another process takes it
	// over (after a crash); 0 means 15 minutes. It must exceed the longest step timeout.
	RescueStuckJobsAfter time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.FetchPollInterval <= 0 {
		c.FetchPollInterval = 200 * time.Millisecond
	}
	if c.RescueStuckJobsAfter <= 0 {
		c.RescueStuckJobsAfter = 15 * time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Engine executes runs. It implements orchestrator.Runs and is safe for concurrent use. Call Start to begin
// working jobs and Stop to finish.
type Engine struct {
	logger  *slog.Logger
	db      *sqldb.DB
	agents  agentv1.AgentServiceClient
	memory  memoryv1.MemoryServiceClient
	cfg     Config
	backend backend
}

var _ orchestrator.Runs = (*Engine)(nil)

// NewSQLite returns an Engine that keeps runs and jobs in the SQLite database db (already migrated by
// sqlstore.New) and works them with River's riversqlite driver.
func NewSQLite(ctx context.Context, logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) (*Engine, error) {
	if db.Dialect != sqldb.SQLite {
		return nil, fmt.Errorf("engine: NewSQLite needs a SQLite database, got %s", db.Dialect)
	}
	if cfg.FetchPollInterval <= 0 {
		cfg.FetchPollInterval = 50 * time.Millisecond
	}
	e := newEngine(logger, db, agents, memory, cfg)
	b, err := newSQLiteBackend(ctx, db, e.riverConfig())
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	e.backend = b
	return e, nil
}

// NewPostgres returns an Engine over Postgres: db (already migrated by sqlstore.New) serves reads through
// database/sql, and its pgx pool carries River and every write transaction, all in the orchestrator's schema.
func NewPostgres(ctx context.Context, logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) (*Engine, error) {
	if db.Dialect != sqldb.Postgres {
		return nil, fmt.Errorf("engine: NewPostgres needs a Postgres database, got %s", db.Dialect)
	}
	db = db.Component(sqldb.OrchestratorComponent)
	e := newEngine(logger, db, agents, memory, cfg)
	b, err := newPgxBackend(ctx, db, e.riverConfig())
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	e.backend = b
	return e, nil
}

func newEngine(logger *slog.Logger, db *sqldb.DB, agents agentv1.AgentServiceClient, memory memoryv1.MemoryServiceClient, cfg Config) *Engine {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Engine{logger: logger, db: db, agents: agents, memory: memory, cfg: cfg.withDefaults()}
}

func (e *Engine) riverConfig() *river.Config {
	workers := river.NewWorkers()
	river.AddWorker(workers, &worker{e: e})
	return &river.Config{
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: e.cfg.Workers}},
		Workers:           workers,
		FetchPollInterval: e.cfg.FetchPollInterval,
		// River fetches at most once per cooldown when woken by an insert or a notification; a short one lets a
		// step start as soon as the step before it committed. The poll interval only matters while idle.
		FetchCooldown:        min(2*time.Millisecond, e.cfg.FetchPollInterval),
		RescueStuckJobsAfter: e.cfg.RescueStuckJobsAfter,
		// Every step job sets its own timeout (worker.Timeout); River's client-wide default (1 minute) would only
		// make River reject a RescueStuckJobsAfter below it.
		JobTimeout: min(e.cfg.RescueStuckJobsAfter, river.JobTimeoutDefault),
		Logger:     e.logger,
		// River's tables live in the orchestrator's schema on Postgres (empty on SQLite: its own file).
		Schema: e.db.Schema,
	}
}

// Start begins working jobs; it returns once the workers have started. Runs make progress only while some
// process has a started Engine over the same database.
func (e *Engine) Start(ctx context.Context) error { return e.backend.start(ctx) }

// Stop stops fetching jobs and waits for running ones to finish or ctx to end.
func (e *Engine) Stop(ctx context.Context) error { return e.backend.stop(ctx) }

func (e *Engine) reader() querier { return sqlQuerier{db: e.db, q: e.db.DB} }

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

// StartRun implements orchestrator.Runs.
func (e *Engine) StartRun(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, input *structpb.Struct, key string) (*orchestratorv1.WorkflowRun, error) {
	if input == nil {
		input = &structpb.Struct{}
	}
	if err := checkSchema(bp.GetInputSchema(), structpb.NewStructValue(input), "input"); err != nil {
		return nil, fmt.Errorf("start run: %w: %w", orchestrator.ErrInvalidInput, err)
	}
	if key != "" {
		if r, err := e.runByKey(ctx, e.reader(), tenant, key); err == nil {
			return r, nil
		} else if !errors.Is(err, errNoRows) {
			return nil, fmt.Errorf("start run: %w", err)
		}
	}
	now := e.now()
	r := newRun(newRunID(), tenant, bp, input, key, now)
	r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunStarted{
		RunStarted: &orchestratorv1.RunStarted{BlueprintVersion: bp.GetVersion()}}}, now)
	r.jobs = append(r.jobs, pendingJob{args: stepArgs{RunID: r.id, Expire: true}, opts: &river.InsertOpts{
		MaxAttempts: defaultAttempts, ScheduledAt: now.Add(durationOr(bp.GetRunDeadline(), defaultRunDeadline))}})
	e.advance(r, now)
	err := e.backend.inTx(ctx, func(tx *txn) error {
		if err := insertRun(ctx, tx, r); err != nil {
			return err
		}
		return e.save(ctx, tx, r)
	})
	if err != nil && key != "" {
		// A concurrent StartRun with the same key won the unique index: return its run.
		if existing, kerr := e.runByKey(ctx, e.reader(), tenant, key); kerr == nil {
			e.db.Wrote(ctx) // the run is a few moments old: the caller's next reads must see it too
			return existing, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("start run: %w", err)
	}
	e.db.Wrote(ctx)
	return r.proto(), nil
}

func (e *Engine) runByKey(ctx context.Context, q querier, tenant, key string) (*orchestratorv1.WorkflowRun, error) {
	var id string
	if err := queryRow(ctx, q, `SELECT id FROM loom.runs WHERE tenant = ? AND idempotency_key = ?`, []any{tenant, key}, &id); err != nil {
		return nil, err
	}
	r, err := loadRun(ctx, q, tenant, id, false)
	if err != nil {
		return nil, err
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
	var out []*run
	for rs.Next() {
		r, err := scanRun(rs)
		if err != nil {
			return nil, "", fmt.Errorf("list runs: %w", err)
		}
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	next := ""
	if len(out) > pageSize {
		out = out[:pageSize]
		last := out[pageSize-1]
		next = pagetoken.Encode("runs", runPage{Time: last.created, ID: last.id})
	}
	runs := make([]*orchestratorv1.WorkflowRun, len(out))
	for i, r := range out {
		runs[i] = r.proto()
	}
	return runs, next, nil
}

// CancelRun implements orchestrator.Runs. ErrFailedPrecondition if the run already finished.
func (e *Engine) CancelRun(ctx context.Context, tenant, id, reason string) (*orchestratorv1.WorkflowRun, error) {
	var (
		r      *run
		cancel []int64
	)
	err := e.backend.inTx(ctx, func(tx *txn) error {
		var err error
		r, err = loadRun(ctx, tx, tenant, id, true)
		if err != nil {
			return notFound(err)
		}
		if r.terminal() {
			return fmt.Errorf("run %q already ended (%s): %w", id, r.state, orchestrator.ErrFailedPrecondition)
		}
		now := e.now()
		cancel = r.end(orchestratorv1.RunState_RUN_STATE_CANCELLED, reason, now)
		r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunCancelled{
			RunCancelled: &orchestratorv1.RunCancelled{Reason: reason}}}, now)
		return e.save(ctx, tx, r)
	})
	if err != nil {
		return nil, fmt.Errorf("cancel run %q: %w", id, err)
	}
	e.db.Wrote(ctx)
	e.cancelJobs(ctx, cancel)
	return r.proto(), nil
}

// cancelJobs cancels in-flight jobs after their run ended; a job that is not running anywhere is harmless to
// cancel, and a job that escapes cancellation finds its step no longer running and does nothing.
func (e *Engine) cancelJobs(ctx context.Context, ids []int64) {
	for _, id := range ids {
		if err := e.backend.cancelJob(ctx, id); err != nil {
			e.logger.WarnContext(ctx, "engine: cancel job", slog.Int64("job", id), slog.Any("error", err))
		}
	}
}

// Events implements orchestrator.Runs: up to limit events after afterSequence, and whether the run had ended
// before they were read (so an empty result with ended set means there will be no more).
func (e *Engine) Events(ctx context.Context, tenant, id string, afterSequence int64, limit int) ([]*orchestratorv1.WatchRunResponse, bool, error) {
	// One reader for both queries: the events are read from the same server as the state, or a newer one.
	rd := e.replicaReader(ctx)
	var state int64
	if err := queryRow(ctx, rd, `SELECT state FROM loom.runs WHERE id = ? AND tenant = ?`, []any{id, tenant}, &state); err != nil {
		return nil, false, fmt.Errorf("run events %q: %w", id, notFound(err))
	}
	rs, done, err := rd.query(ctx,
		`SELECT event FROM loom.run_events WHERE run_id = ? AND sequence > ? ORDER BY sequence LIMIT ?`, id, afterSequence, max(limit, 1))
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

// ListPendingApprovals implements orchestrator.Runs: waiting approval steps, oldest first.
func (e *Engine) ListPendingApprovals(ctx context.Context, tenant, runID string, pageSize int, pageToken string) ([]*orchestratorv1.Approval, string, error) {
	pageSize = max(pageSize, 1)
	var after approvalPage
	if err := decodeToken(pageToken, "approvals", &after); err != nil {
		return nil, "", fmt.Errorf("list approvals: %w", err)
	}
	q := `SELECT s.run_id, s.step_id, s.start_time, s.deadline, r.blueprint, r.definition
		FROM loom.run_steps s JOIN loom.runs r ON r.id = s.run_id
		WHERE r.tenant = ? AND s.state = ?`
	args := []any{tenant, int64(orchestratorv1.StepState_STEP_STATE_WAITING)}
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
	var (
		out   []*orchestratorv1.Approval
		pages []approvalPage
	)
	for rs.Next() {
		var (
			runID, stepID, bpName string
			start, deadline       int64
			def                   []byte
		)
		if err := rs.Scan(&runID, &stepID, &start, &deadline, &bpName, &def); err != nil {
			return nil, "", fmt.Errorf("list approvals: %w", err)
		}
		bp := &orchestratorv1.Blueprint{}
		if err := proto.Unmarshal(def, bp); err != nil {
			return nil, "", fmt.Errorf("list approvals: %w", err)
		}
		a := &orchestratorv1.Approval{RunId: runID, StepId: stepID, Blueprint: bpName,
			Deadline: micros(deadline), CreateTime: micros(start)}
		for _, s := range bp.GetSteps() {
			if s.GetId() == stepID {
				a.Prompt, a.PayloadSchema = s.GetApproval().GetPrompt(), s.GetApproval().GetPayloadSchema()
			}
		}
		out = append(out, a)
		pages = append(pages, approvalPage{Time: start, Run: runID, Step: stepID})
	}
	if err := rs.Err(); err != nil {
		return nil, "", fmt.Errorf("list approvals: %w", err)
	}
	next := ""
	if len(out) > pageSize {
		out = out[:pageSize]
		next = pagetoken.Encode("approvals", pages[pageSize-1])
	}
	return out, next, nil
}

// SubmitApproval implements orchestrator.Runs. ErrFailedPrecondition if the step is not waiting;
// ErrInvalidInput if an approval's payload does not match the step's schema.
func (e *Engine) SubmitApproval(ctx context.Context, tenant, runID, stepID string, decision orchestratorv1.Decision, payload *structpb.Struct, comment string) (*orchestratorv1.WorkflowRun, error) {
	var (
		r      *run
		cancel []int64
	)
	err := e.backend.inTx(ctx, func(tx *txn) error {
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
				return fmt.Errorf("%w: %w", orchestrator.ErrInvalidInput, err)
			}
			r.succeed(s, structpb.NewStructValue(payload), now)
			e.advance(r, now)
		case orchestratorv1.Decision_DECISION_REJECT:
			msg := "rejected"
			if comment != "" {
				msg += ": " + comment
			}
			cancel = r.failStep(s, msg, now)
		default:
			return fmt.Errorf("decision %s: %w", decision, orchestrator.ErrInvalidInput)
		}
		return e.save(ctx, tx, r)
	})
	if err != nil {
		return nil, fmt.Errorf("submit approval: %w", err)
	}
	e.db.Wrote(ctx)
	e.cancelJobs(ctx, cancel)
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
