package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
)

const (
	defaultAttempts        = 3
	defaultStepTimeout     = 10 * time.Minute
	defaultApprovalTimeout = 7 * 24 * time.Hour
	defaultRunDeadline     = 24 * time.Hour
)

// run is a run loaded into memory for one transaction (or one read).
type run struct {
	id, tenant, blueprint   string
	version                 int64
	bp                      *orchestratorv1.Blueprint
	state                   orchestratorv1.RunState
	input                   *structpb.Struct
	output                  *structpb.Value
	err, key                string
	created, ended          int64
	lastSeq                 int64
	leaseOwner, requestHash string
	// traceContext is the trace context of the StartRun call, a JSON object of W3C headers ('' when it was
	// not traced); carrier is it decoded, on first use.
	traceContext string
	carrier      map[string]string
	// anomaly is the stored anomaly flag, nil when none.
	anomaly *orchestratorv1.Anomaly

	steps []*step
	byID  map[string]*step
	defs  map[string]*orchestratorv1.Step // while loading
	// The blueprint's structure, built by graph on first use.
	owners   map[string]ownerRef
	expanded map[string][]*step

	// savedSeq is lastSeq as last written (or read): the owner's commits are fenced on it.
	savedSeq int64
	// Changes not yet written by save.
	events []*orchestratorv1.WatchRunResponse
}

type step struct {
	id                 string
	pos                int
	def                *orchestratorv1.Step
	state              orchestratorv1.StepState
	attempts, failures int64
	output             *structpb.Value
	err                string
	// deadline is when a running step is next due (a delay's end, a retry after its backoff; 0: now), or when a
	// waiting approval expires.
	start, end, deadline int64
	dirty                bool
	// needsAttempt: the step's next attempt is not recorded yet (after a retry's backoff, or a step found running
	// when a run is loaded, whose attempt a crash may have cut short). In memory only.
	needsAttempt bool
	// usage is the agent runs' usage of all attempts (nil: none); usageDirty when it changed since written.
	usage      *orchestratorv1.Usage
	usageDirty bool
}

func newRun(id, tenant string, bp *orchestratorv1.Blueprint, input *structpb.Struct, key string, now time.Time) *run {
	r := &run{
		id: id, tenant: tenant, blueprint: bp.GetName(), version: bp.GetVersion(), bp: bp,
		state: orchestratorv1.RunState_RUN_STATE_RUNNING, input: input, key: key, created: now.UnixMicro(),
	}
	r.index()
	for i, d := range bp.GetSteps() {
		s := &step{id: d.GetId(), pos: i, def: d, state: orchestratorv1.StepState_STEP_STATE_PENDING, dirty: true}
		r.steps = append(r.steps, s)
		r.byID[s.id] = s
	}
	return r
}

func (r *run) index() { r.byID = make(map[string]*step, len(r.bp.GetSteps())) }

func isTerminal(s orchestratorv1.RunState) bool {
	return s == orchestratorv1.RunState_RUN_STATE_SUCCEEDED || s == orchestratorv1.RunState_RUN_STATE_FAILED ||
		s == orchestratorv1.RunState_RUN_STATE_CANCELLED
}

func (r *run) terminal() bool { return isTerminal(r.state) }

func stepDone(s orchestratorv1.StepState) bool {
	return s == orchestratorv1.StepState_STEP_STATE_SUCCEEDED || s == orchestratorv1.StepState_STEP_STATE_FAILED ||
		s == orchestratorv1.StepState_STEP_STATE_SKIPPED
}

// emit appends an event with the next sequence number.
func (r *run) emit(stepID string, ev *orchestratorv1.WatchRunResponse, now time.Time) {
	r.lastSeq++
	ev.Sequence, ev.Time, ev.StepId = r.lastSeq, timestamppb.New(now), stepID
	r.events = append(r.events, ev)
}

func (r *run) succeed(s *step, out *structpb.Value, now time.Time) {
	if out == nil {
		out = structpb.NewNullValue()
	}
	s.state, s.output, s.end, s.err, s.dirty = orchestratorv1.StepState_STEP_STATE_SUCCEEDED, out, now.UnixMicro(), "", true
	r.emit(s.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepOutput{
		StepOutput: &orchestratorv1.StepOutput{Output: out, Usage: s.usage, RunUsage: r.usage()}}}, now)
}

// failStep fails a step and with it the run.
func (r *run) failStep(s *step, msg string, now time.Time) {
	s.state, s.err, s.end, s.dirty = orchestratorv1.StepState_STEP_STATE_FAILED, msg, now.UnixMicro(), true
	r.fail(fmt.Sprintf("step %q failed: %s", s.id, msg), now)
}

func (r *run) fail(msg string, now time.Time) {
	r.end(orchestratorv1.RunState_RUN_STATE_FAILED, msg, now)
	r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunFailed{
		RunFailed: &orchestratorv1.RunFailed{Error: msg, Usage: r.usage()}}}, now)
}

// end finishes the run in state, skipping every unfinished step. The owner cancels what still runs in memory
// when it sees the run ended.
func (r *run) end(state orchestratorv1.RunState, msg string, now time.Time) {
	r.state, r.err, r.ended = state, msg, now.UnixMicro()
	for _, s := range r.steps {
		if stepDone(s.state) {
			continue
		}
		s.state, s.end, s.dirty = orchestratorv1.StepState_STEP_STATE_SKIPPED, now.UnixMicro(), true
	}
}

// ownerRef is the branch or parallel step that contains a step, and the side ("then", "else", "parallel").
type ownerRef struct {
	step *step
	side string
}

// graph indexes the blueprint's structure once per loaded run: each step's owner, and what depending on a step
// waits for (the step and, for a parallel step, its members, recursively).
func (r *run) graph() {
	if r.owners != nil {
		return
	}
	r.owners = make(map[string]ownerRef, len(r.steps))
	for _, o := range r.steps {
		switch k := o.def.GetKind().(type) {
		case *orchestratorv1.Step_Branch:
			for _, id := range k.Branch.GetThenSteps() {
				if _, ok := r.owners[id]; !ok {
					r.owners[id] = ownerRef{o, "then"}
				}
			}
			for _, id := range k.Branch.GetElseSteps() {
				if _, ok := r.owners[id]; !ok {
					r.owners[id] = ownerRef{o, "else"}
				}
			}
		case *orchestratorv1.Step_Parallel:
			for _, id := range k.Parallel.GetSteps() {
				if _, ok := r.owners[id]; !ok {
					r.owners[id] = ownerRef{o, "parallel"}
				}
			}
		}
	}
	r.expanded = make(map[string][]*step, len(r.steps))
	var expand func(id string, seen map[string]bool, out []*step) []*step
	expand = func(id string, seen map[string]bool, out []*step) []*step {
		s := r.byID[id]
		if s == nil || seen[id] {
			return out
		}
		seen[id] = true
		out = append(out, s)
		if p := s.def.GetParallel(); p != nil {
			for _, m := range p.GetSteps() {
				out = expand(m, seen, out)
			}
		}
		return out
	}
	for _, s := range r.steps {
		r.expanded[s.id] = expand(s.id, map[string]bool{}, nil)
	}
}

// owner returns the branch or parallel step that contains s, and the side ("then", "else", "parallel").
func (r *run) owner(s *step) (*step, string) {
	r.graph()
	o := r.owners[s.id]
	return o.step, o.side
}

// expand returns id and, for a parallel step, its members (recursively): what "depends on id" waits for.
func (r *run) expand(id string) []*step {
	r.graph()
	return r.expanded[id]
}

type readiness int

const (
	wait readiness = iota
	skip
	ready
)

func (r *run) readiness(s *step) readiness {
	for _, dep := range s.def.GetDependsOn() {
		for _, d := range r.expand(dep) {
			switch d.state {
			case orchestratorv1.StepState_STEP_STATE_SKIPPED, orchestratorv1.StepState_STEP_STATE_FAILED:
				return skip
			case orchestratorv1.StepState_STEP_STATE_SUCCEEDED:
			default:
				return wait
			}
		}
	}
	if o, side := r.owner(s); o != nil {
		switch o.state {
		case orchestratorv1.StepState_STEP_STATE_SKIPPED, orchestratorv1.StepState_STEP_STATE_FAILED:
			return skip
		case orchestratorv1.StepState_STEP_STATE_SUCCEEDED:
		case orchestratorv1.StepState_STEP_STATE_RUNNING:
			// A parallel step runs while its members do: they start when it does, and it finishes after them.
			if side != "parallel" {
				return wait
			}
			return ready
		default:
			return wait
		}
		if side != "parallel" && o.output.GetBoolValue() != (side == "then") {
			return skip
		}
	}
	return ready
}

// retryPolicy returns a step's attempts and backoffs with defaults applied.
func retryPolicy(d *orchestratorv1.Step) (attempts int, initial, maxBackoff time.Duration) {
	attempts, initial, maxBackoff = defaultAttempts, time.Second, time.Minute
	if rp := d.GetRetry(); rp != nil {
		attempts = int(rp.GetMaxAttempts())
		if rp.GetInitialBackoff() != nil {
			initial = rp.GetInitialBackoff().AsDuration()
		}
		if rp.GetMaxBackoff() != nil {
			maxBackoff = rp.GetMaxBackoff().AsDuration()
		}
	}
	return max(attempts, 1), initial, max(maxBackoff, initial)
}

func (r *run) start(s *step, state orchestratorv1.StepState, now time.Time) {
	s.state, s.start, s.dirty = state, now.UnixMicro(), true
}

// setTraceContext stores carrier (telemetry.Inject of the StartRun call; nil when it was not traced) with r.
func (r *run) setTraceContext(carrier map[string]string) error {
	if len(carrier) == 0 {
		return nil
	}
	b, err := json.Marshal(carrier)
	if err != nil {
		return fmt.Errorf("trace context: %w", err)
	}
	r.traceContext, r.carrier = string(b), carrier
	return nil
}

// traceCarrier returns the stored trace context for telemetry.Extract: nil when there is none, or when it does
// not decode (the steps are then traced as a trace of their own rather than not run).
func (r *run) traceCarrier() map[string]string {
	if r.carrier == nil && r.traceContext != "" {
		if err := json.Unmarshal([]byte(r.traceContext), &r.carrier); err != nil {
			r.carrier = map[string]string{}
		}
	}
	return r.carrier
}

func (r *run) proto() *orchestratorv1.WorkflowRun {
	w := &orchestratorv1.WorkflowRun{
		Id: r.id, Blueprint: r.blueprint, BlueprintVersion: r.version, State: r.state, Input: r.input,
		Output: r.output, Error: r.err, IdempotencyKey: r.key, CreateTime: micros(r.created),
		EndTime: micros(r.ended), LastSequence: r.lastSeq, Usage: r.usage(), Anomaly: r.anomaly,
	}
	for _, s := range r.steps {
		w.Steps = append(w.Steps, &orchestratorv1.StepRun{
			StepId: s.id, State: s.state, Attempts: int32(s.attempts), Output: s.output, Error: s.err,
			StartTime: micros(s.start), EndTime: micros(s.end), Usage: s.usage, AgentVersion: agentVersion(s.def),
		})
	}
	return w
}

const runColumns = `id, tenant, blueprint, blueprint_version, definition, state, input, output, error, idempotency_key, create_time, end_time, last_sequence, owner, request_hash, trace_context, anomaly`

// errCorrupt marks a stored record that no longer decodes.
var errCorrupt = errors.New("stored record does not decode")

func scanRun(rs interface{ Scan(...any) error }) (*run, error) {
	var (
		r                  run
		def, input, output []byte
		anomaly            []byte
		state              int64
	)
	if err := rs.Scan(&r.id, &r.tenant, &r.blueprint, &r.version, &def, &state, &input, &output, &r.err, &r.key,
		&r.created, &r.ended, &r.lastSeq, &r.leaseOwner, &r.requestHash, &r.traceContext, &anomaly); err != nil {
		return nil, err
	}
	if len(anomaly) > 0 {
		r.anomaly = &orchestratorv1.Anomaly{}
		if err := proto.Unmarshal(anomaly, r.anomaly); err != nil {
			r.anomaly = nil // a flag that does not decode is no flag; the run itself is intact
		}
	}
	r.savedSeq = r.lastSeq
	r.state = orchestratorv1.RunState(state)
	r.bp, r.input = &orchestratorv1.Blueprint{}, &structpb.Struct{}
	if err := proto.Unmarshal(def, r.bp); err != nil {
		return &r, fmt.Errorf("run %s: decode blueprint: %w: %w", r.id, errCorrupt, err)
	}
	if err := proto.Unmarshal(input, r.input); err != nil {
		return &r, fmt.Errorf("run %s: decode input: %w: %w", r.id, errCorrupt, err)
	}
	if len(output) > 0 {
		r.output = &structpb.Value{}
		if err := proto.Unmarshal(output, r.output); err != nil {
			return &r, fmt.Errorf("run %s: decode output: %w: %w", r.id, errCorrupt, err)
		}
	}
	r.index()
	return &r, nil
}

// loadRun reads a run and its steps. An empty tenant skips the tenant check (workers). lock takes the run's row
// lock on Postgres (SQLite transactions already hold the database's write lock), which serialises every change
// to a run.
func loadRun(ctx context.Context, q querier, tenant, id string, lock bool) (*run, error) {
	query := `SELECT ` + runColumns + ` FROM loom.runs WHERE id = ?`
	args := []any{id}
	if tenant != "" {
		query += ` AND tenant = ?`
		args = append(args, tenant)
	}
	if lock && q.dialect() == sqldb.Postgres {
		query += ` FOR UPDATE`
	}
	rs, done, err := q.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	if !rs.Next() {
		err := rs.Err()
		done()
		if err != nil {
			return nil, err
		}
		return nil, errNoRows
	}
	r, err := scanRun(rs)
	done()
	if err != nil {
		return nil, err
	}
	rs, done, err = q.query(ctx, `SELECT `+stepColumns+` FROM loom.run_steps WHERE run_id = ? ORDER BY position`, id)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := scanSteps(rs, map[string]*run{id: r}); err != nil {
		return nil, err
	}
	return r, nil
}

const stepColumns = `run_id, step_id, position, state, attempts, failures, output, error, start_time, end_time, deadline, usage`

// scanSteps reads step rows (stepColumns, ordered by position within a run) into their runs.
func scanSteps(rs rows, runs map[string]*run) error {
	for rs.Next() {
		var (
			s          step
			runID      string
			pos, state int64
			out, usage []byte
		)
		if err := rs.Scan(&runID, &s.id, &pos, &state, &s.attempts, &s.failures, &out, &s.err, &s.start, &s.end, &s.deadline, &usage); err != nil {
			return err
		}
		if len(usage) > 0 {
			s.usage = &orchestratorv1.Usage{}
			if err := proto.Unmarshal(usage, s.usage); err != nil {
				return fmt.Errorf("run %s: decode step usage: %w: %w", runID, errCorrupt, err)
			}
		}
		r := runs[runID]
		if r == nil {
			continue
		}
		if r.defs == nil {
			r.defs = make(map[string]*orchestratorv1.Step, len(r.bp.GetSteps()))
			for _, d := range r.bp.GetSteps() {
				r.defs[d.GetId()] = d
			}
		}
		s.pos, s.state, s.def = int(pos), orchestratorv1.StepState(state), r.defs[s.id]
		if s.def == nil {
			return fmt.Errorf("run %s: step %q is not in its blueprint: %w", runID, s.id, errCorrupt)
		}
		if len(out) > 0 {
			s.output = &structpb.Value{}
			if err := proto.Unmarshal(out, s.output); err != nil {
				return fmt.Errorf("run %s: decode step output: %w: %w", runID, errCorrupt, err)
			}
		}
		r.steps = append(r.steps, &s)
		r.byID[s.id] = &s
	}
	return rs.Err()
}

func marshal(m proto.Message) ([]byte, error) {
	if m == nil {
		return []byte{}, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if b == nil {
		b = []byte{}
	}
	return b, err
}

func insertRun(ctx context.Context, tx *txn, r *run, leaseUntil int64) error {
	def, err := marshal(r.bp)
	if err != nil {
		return err
	}
	input, err := marshal(r.input)
	if err != nil {
		return err
	}
	out, err := marshal(r.output)
	if err != nil {
		return err
	}
	stmts := []stmt{{`INSERT INTO loom.runs (id, tenant, blueprint, blueprint_version, definition, state, input, output, error, idempotency_key, create_time, end_time, last_sequence, owner, lease_until, request_hash, trace_context)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		[]any{r.id, r.tenant, r.blueprint, r.version, def, int64(r.state), input, out, r.err, r.key, r.created, r.ended, r.lastSeq, r.leaseOwner, leaseUntil, r.requestHash, r.traceContext}}}
	// Steps in multi-row INSERTs of 50 rows (500 parameters).
	for i := 0; i < len(r.steps); i += 50 {
		chunk := r.steps[i:min(len(r.steps), i+50)]
		q := `INSERT INTO loom.run_steps (run_id, step_id, position, state, attempts, output, error, start_time, end_time, deadline) VALUES `
		args := make([]any, 0, 10*len(chunk))
		for j, s := range chunk {
			so, err := marshal(s.output)
			if err != nil {
				return err
			}
			if j > 0 {
				q += ", "
			}
			q += "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
			args = append(args, r.id, s.id, int64(s.pos), int64(s.state), s.attempts, so, s.err, s.start, s.end, s.deadline)
			s.dirty = false
		}
		stmts = append(stmts, stmt{q, args})
	}
	return tx.execAll(ctx, stmts)
}

// changes returns the statements that write what changed in r (steps and events; not the run row) and marks
// them written.
func (r *run) changes(dialect sqldb.Dialect) ([]stmt, error) {
	var (
		stmts []stmt
		dirty []*step
	)
	for _, s := range r.steps {
		if s.dirty {
			dirty = append(dirty, s)
			s.dirty = false
		}
	}
	// Several steps in one statement per 50 (a parallel block starts and ends 50 or more at once): an UPDATE
	// from a VALUES list, typed for Postgres.
	cast := func(v, typ string) string {
		if dialect == sqldb.Postgres {
			return "CAST(" + v + " AS " + typ + ")"
		}
		return v
	}
	row := "(" + strings.Join([]string{"?", cast("?", "BIGINT"), cast("?", "BIGINT"), cast("?", "BIGINT"), cast("?", "BYTEA"),
		"?", cast("?", "BIGINT"), cast("?", "BIGINT"), cast("?", "BIGINT")}, ", ") + ")"
	for i := 0; i < len(dirty); {
		chunk := dirty[i:min(len(dirty), i+50)]
		i += len(chunk)
		var args []any
		for _, s := range chunk {
			out, err := marshal(s.output)
			if err != nil {
				return nil, err
			}
			args = append(args, s.id, int64(s.state), s.attempts, s.failures, out, s.err, s.start, s.end, s.deadline)
		}
		if len(chunk) == 1 {
			stmts = append(stmts, stmt{`UPDATE loom.run_steps SET state = ?, attempts = ?, failures = ?, output = ?, error = ?,
				start_time = ?, end_time = ?, deadline = ? WHERE step_id = ? AND run_id = ?`, append(args[1:], args[0], r.id)})
			continue
		}
		rows := strings.TrimSuffix(strings.Repeat(row+", ", len(chunk)), ", ")
		stmts = append(stmts, stmt{`WITH v (step_id, state, attempts, failures, output, error, start_time, end_time, deadline) AS (VALUES ` + rows + `)
			UPDATE loom.run_steps SET state = v.state, attempts = v.attempts, failures = v.failures, output = v.output, error = v.error,
			start_time = v.start_time, end_time = v.end_time, deadline = v.deadline FROM v
			WHERE loom.run_steps.run_id = ? AND loom.run_steps.step_id = v.step_id`, append(args, r.id)})
	}
	stmts = append(stmts, r.usageChanges()...)
	// Events in multi-row INSERTs, 100 rows (400 parameters) each. event_time, the key of the partitions on
	// Postgres and of retention, is the event's time, but never before the run's creation (a replica's clock may
	// lag the one that started the run): reads of a run's events look only from its creation on.
	for i := 0; i < len(r.events); i += 100 {
		chunk := r.events[i:min(len(r.events), i+100)]
		q := `INSERT INTO loom.run_events (run_id, sequence, event_time, event) VALUES `
		args := make([]any, 0, 4*len(chunk))
		for j, ev := range chunk {
			b, err := marshal(ev)
			if err != nil {
				return nil, err
			}
			if j > 0 {
				q += ", "
			}
			q += "(?, ?, ?, ?)"
			args = append(args, r.id, ev.GetSequence(), max(ev.GetTime().AsTime().UnixMicro(), r.created), b)
		}
		stmts = append(stmts, stmt{q, args})
	}
	r.events = nil
	return stmts, nil
}

// save writes what changed in r under a lock the caller holds (loadRun with lock): steps, events and the run
// row, whose due_time it sets to due unless that is zero (the run needs its owner from then, and the queue lag
// counts from then).
func save(ctx context.Context, tx *txn, r *run, due time.Time) error {
	stmts, err := r.changes(tx.dialect())
	if err != nil {
		return err
	}
	out, err := marshal(r.output)
	if err != nil {
		return err
	}
	q := `UPDATE loom.runs SET state = ?, output = ?, error = ?, end_time = ?, last_sequence = ?`
	args := []any{int64(r.state), out, r.err, r.ended, r.lastSeq}
	if !due.IsZero() {
		q += `, due_time = ?`
		args = append(args, due.UnixMicro())
	}
	stmts = append(stmts, stmt{q + ` WHERE id = ?`, append(args, r.id)})
	if err := tx.execAll(ctx, stmts); err != nil {
		return err
	}
	r.savedSeq = r.lastSeq
	return nil
}

func durationOr(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.AsDuration()
}
