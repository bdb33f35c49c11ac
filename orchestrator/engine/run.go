package engine

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/riverqueue/river"
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
	id, tenant, blueprint string
	version               int64
	bp                    *orchestratorv1.Blueprint
	state                 orchestratorv1.RunState
	input                 *structpb.Struct
	output                *structpb.Value
	err, key              string
	created, ended        int64
	lastSeq               int64

	steps []*step
	byID  map[string]*step

	// Changes not yet written by save.
	events []*orchestratorv1.WatchRunResponse
	jobs   []pendingJob
}

type step struct {
	id                   string
	pos                  int
	def                  *orchestratorv1.Step
	state                orchestratorv1.StepState
	attempts, failures   int64
	output               *structpb.Value
	err                  string
	start, end, deadline int64
	jobID                int64
	dirty                bool
}

type pendingJob struct {
	step *step
	args stepArgs
	opts *river.InsertOpts
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
		StepOutput: &orchestratorv1.StepOutput{Output: out}}}, now)
}

// failStep fails a step and with it the run. It returns the jobs to cancel.
func (r *run) failStep(s *step, msg string, now time.Time) []int64 {
	s.state, s.err, s.end, s.dirty = orchestratorv1.StepState_STEP_STATE_FAILED, msg, now.UnixMicro(), true
	return r.fail(fmt.Sprintf("step %q failed: %s", s.id, msg), now)
}

func (r *run) fail(msg string, now time.Time) []int64 {
	cancel := r.end(orchestratorv1.RunState_RUN_STATE_FAILED, msg, now)
	r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunFailed{
		RunFailed: &orchestratorv1.RunFailed{Error: msg}}}, now)
	return cancel
}

// end finishes the run in state, skipping every unfinished step, and returns the jobs of running steps.
func (r *run) end(state orchestratorv1.RunState, msg string, now time.Time) []int64 {
	r.state, r.err, r.ended = state, msg, now.UnixMicro()
	var cancel []int64
	for _, s := range r.steps {
		if stepDone(s.state) {
			continue
		}
		if s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && s.jobID != 0 {
			cancel = append(cancel, s.jobID)
		}
		s.state, s.end, s.dirty = orchestratorv1.StepState_STEP_STATE_SKIPPED, now.UnixMicro(), true
	}
	return cancel
}

// owner returns the branch or parallel step that contains s, and the side ("then", "else", "parallel").
func (r *run) owner(s *step) (*step, string) {
	for _, o := range r.steps {
		switch k := o.def.GetKind().(type) {
		case *orchestratorv1.Step_Branch:
			if slices.Contains(k.Branch.GetThenSteps(), s.id) {
				return o, "then"
			}
			if slices.Contains(k.Branch.GetElseSteps(), s.id) {
				return o, "else"
			}
		case *orchestratorv1.Step_Parallel:
			if slices.Contains(k.Parallel.GetSteps(), s.id) {
				return o, "parallel"
			}
		}
	}
	return nil, ""
}

// expand returns id and, for a parallel step, its members (recursively): what "depends on id" waits for.
func (r *run) expand(id string, seen map[string]bool, out []*step) []*step {
	s := r.byID[id]
	if s == nil || seen[id] {
		return out
	}
	seen[id] = true
	out = append(out, s)
	if p := s.def.GetParallel(); p != nil {
		for _, m := range p.GetSteps() {
			out = r.expand(m, seen, out)
		}
	}
	return out
}

type readiness int

const (
	wait readiness = iota
	skip
	ready
)

func (r *run) readiness(s *step) readiness {
	for _, dep := range s.def.GetDependsOn() {
		for _, d := range r.expand(dep, map[string]bool{}, nil) {
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

// schedule queues a job for s: at a time, or at once when at is zero. (River moves future jobs to the queue on
// its scheduler's interval, about 5 seconds, so delays and retries have that granularity.)
func (r *run) schedule(s *step, at time.Time, expire bool) {
	attempts, initial, maxBackoff := retryPolicy(s.def)
	timeout := defaultStepTimeout
	if s.def.GetTimeout() != nil {
		timeout = s.def.GetTimeout().AsDuration()
	}
	if expire || s.def.GetDelay() != nil {
		attempts, timeout = defaultAttempts, time.Minute
	}
	r.jobs = append(r.jobs, pendingJob{
		step: s,
		args: stepArgs{RunID: r.id, StepID: s.id, Expire: expire, TimeoutMS: timeout.Milliseconds(),
			InitialBackoffMS: initial.Milliseconds(), MaxBackoffMS: maxBackoff.Milliseconds(), Attempts: attempts},
		opts: &river.InsertOpts{MaxAttempts: attempts + crashAllowance, ScheduledAt: at},
	})
}

func (r *run) start(s *step, state orchestratorv1.StepState, now time.Time) {
	s.state, s.start, s.dirty = state, now.UnixMicro(), true
}

func (r *run) proto() *orchestratorv1.WorkflowRun {
	w := &orchestratorv1.WorkflowRun{
		Id: r.id, Blueprint: r.blueprint, BlueprintVersion: r.version, State: r.state, Input: r.input,
		Output: r.output, Error: r.err, IdempotencyKey: r.key, CreateTime: micros(r.created),
		EndTime: micros(r.ended), LastSequence: r.lastSeq,
	}
	for _, s := range r.steps {
		w.Steps = append(w.Steps, &orchestratorv1.StepRun{
			StepId: s.id, State: s.state, Attempts: int32(s.attempts), Output: s.output, Error: s.err,
			StartTime: micros(s.start), EndTime: micros(s.end),
		})
	}
	return w
}

const runColumns = `id, tenant, blueprint, blueprint_version, definition, state, input, output, error, idempotency_key, create_time, end_time, last_sequence`

func scanRun(rs interface{ Scan(...any) error }) (*run, error) {
	var (
		r                  run
		def, input, output []byte
		state              int64
	)
	if err := rs.Scan(&r.id, &r.tenant, &r.blueprint, &r.version, &def, &state, &input, &output, &r.err, &r.key,
		&r.created, &r.ended, &r.lastSeq); err != nil {
		return nil, err
	}
	r.state = orchestratorv1.RunState(state)
	r.bp, r.input = &orchestratorv1.Blueprint{}, &structpb.Struct{}
	if err := proto.Unmarshal(def, r.bp); err != nil {
		return nil, fmt.Errorf("decode blueprint: %w", err)
	}
	if err := proto.Unmarshal(input, r.input); err != nil {
		return nil, fmt.Errorf("decode input: %w", err)
	}
	if len(output) > 0 {
		r.output = &structpb.Value{}
		if err := proto.Unmarshal(output, r.output); err != nil {
			return nil, fmt.Errorf("decode output: %w", err)
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
	defs := make(map[string]*orchestratorv1.Step, len(r.bp.GetSteps()))
	for _, d := range r.bp.GetSteps() {
		defs[d.GetId()] = d
	}
	rs, done, err = q.query(ctx, `SELECT step_id, position, state, attempts, failures, output, error, start_time, end_time, deadline, job_id
		FROM loom.run_steps WHERE run_id = ? ORDER BY position`, id)
	if err != nil {
		return nil, err
	}
	defer done()
	for rs.Next() {
		var (
			s     step
			pos   int64
			state int64
			out   []byte
		)
		if err := rs.Scan(&s.id, &pos, &state, &s.attempts, &s.failures, &out, &s.err, &s.start, &s.end, &s.deadline, &s.jobID); err != nil {
			return nil, err
		}
		s.pos, s.state, s.def = int(pos), orchestratorv1.StepState(state), defs[s.id]
		if s.def == nil {
			return nil, fmt.Errorf("run %s: step %q is not in its blueprint", id, s.id)
		}
		if len(out) > 0 {
			s.output = &structpb.Value{}
			if err := proto.Unmarshal(out, s.output); err != nil {
				return nil, fmt.Errorf("decode step output: %w", err)
			}
		}
		r.steps = append(r.steps, &s)
		r.byID[s.id] = &s
	}
	return r, rs.Err()
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

func insertRun(ctx context.Context, tx *txn, r *run) error {
	def, err := marshal(r.bp)
	if err != nil {
		return err
	}
	input, err := marshal(r.input)
	if err != nil {
		return err
	}
	_, err = tx.exec(ctx, `INSERT INTO loom.runs (id, tenant, blueprint, blueprint_version, definition, state, input, output, idempotency_key, create_time)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.id, r.tenant, r.blueprint, r.version, def, int64(r.state), input, []byte{}, r.key, r.created)
	if err != nil {
		return err
	}
	for _, s := range r.steps {
		if _, err := tx.exec(ctx, `INSERT INTO loom.run_steps (run_id, step_id, position, state, output) VALUES (?, ?, ?, ?, ?)`,
			r.id, s.id, int64(s.pos), int64(s.state), []byte{}); err != nil {
			return err
		}
	}
	return nil
}

// save writes what changed: jobs first (their ids go into the step rows), then steps, events and the run row.
func (e *Engine) save(ctx context.Context, tx *txn, r *run) error {
	if len(r.jobs) > 0 {
		params := make([]river.InsertManyParams, len(r.jobs))
		for i, j := range r.jobs {
			params[i] = river.InsertManyParams{Args: j.args, InsertOpts: j.opts}
		}
		ids, err := tx.insert(ctx, params)
		if err != nil {
			return fmt.Errorf("insert jobs: %w", err)
		}
		for i, j := range r.jobs {
			if !j.args.Expire {
				j.step.jobID, j.step.dirty = ids[i], true
			}
		}
		r.jobs = nil
	}
	for _, s := range r.steps {
		if !s.dirty {
			continue
		}
		out, err := marshal(s.output)
		if err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `UPDATE loom.run_steps SET state = ?, attempts = ?, failures = ?, output = ?, error = ?,
			start_time = ?, end_time = ?, deadline = ?, job_id = ? WHERE run_id = ? AND step_id = ?`,
			int64(s.state), s.attempts, s.failures, out, s.err, s.start, s.end, s.deadline, s.jobID, r.id, s.id); err != nil {
			return err
		}
		s.dirty = false
	}
	for _, ev := range r.events {
		b, err := marshal(ev)
		if err != nil {
			return err
		}
		if _, err := tx.exec(ctx, `INSERT INTO loom.run_events (run_id, sequence, event) VALUES (?, ?, ?)`, r.id, ev.GetSequence(), b); err != nil {
			return err
		}
	}
	r.events = nil
	out, err := marshal(r.output)
	if err != nil {
		return err
	}
	_, err = tx.exec(ctx, `UPDATE loom.runs SET state = ?, output = ?, error = ?, end_time = ?, last_sequence = ? WHERE id = ?`,
		int64(r.state), out, r.err, r.ended, r.lastSeq, r.id)
	return err
}

func durationOr(d *durationpb.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.AsDuration()
}
