package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// stepArgs is the River job of one step attempt, of an approval's expiry (Expire with a step), or of a run's
// deadline (Expire without a step). Retry settings travel with the job so NextRetry and Timeout need no query.
type stepArgs struct {
	RunID            string `json:"run_id"`
	StepID           string `json:"step_id,omitempty"`
	Expire           bool   `json:"expire,omitempty"`
	TimeoutMS        int64  `json:"timeout_ms,omitempty"`
	InitialBackoffMS int64  `json:"initial_backoff_ms,omitempty"`
	MaxBackoffMS     int64  `json:"max_backoff_ms,omitempty"`
	// Attempts is the step's retry policy: how many failed attempts end it. River's own MaxAttempts is higher
	// (by crashAllowance), because an attempt cut short by a crash counts for River but records no failure.
	Attempts int `json:"attempts,omitempty"`
}

// crashAllowance is how many attempts cut short by a crash (kill -9 mid-step) a step survives beyond its retry
// policy before River gives up on its job.
const crashAllowance = 10

// Kind implements river.JobArgs.
func (stepArgs) Kind() string { return "loom_orchestrator_step" }

type worker struct {
	river.WorkerDefaults[stepArgs]
	e *Engine
}

// Timeout is the step's attempt timeout.
func (w *worker) Timeout(job *river.Job[stepArgs]) time.Duration {
	if job.Args.TimeoutMS > 0 {
		return time.Duration(job.Args.TimeoutMS) * time.Millisecond
	}
	return defaultStepTimeout
}

// NextRetry applies the step's backoff: initial, doubled after each attempt, capped at max.
func (w *worker) NextRetry(job *river.Job[stepArgs]) time.Time {
	return time.Now().Add(backoff(job.Args, job.Attempt))
}

func backoff(a stepArgs, attempt int) time.Duration {
	d := time.Duration(a.InitialBackoffMS) * time.Millisecond
	limit := time.Duration(a.MaxBackoffMS) * time.Millisecond
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// errPermanent marks failures that retrying cannot fix.
var errPermanent = errors.New("permanent")

func (w *worker) Work(ctx context.Context, job *river.Job[stepArgs]) error {
	e, a := w.e, job.Args
	if a.Expire {
		return e.expire(ctx, job)
	}
	r, err := loadRun(ctx, e.reader(), "", a.RunID, false)
	if errors.Is(err, errNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if s := r.byID[a.StepID]; r.terminal() || s == nil || s.state != orchestratorv1.StepState_STEP_STATE_RUNNING || s.jobID != job.ID {
		return nil // stale: the run ended or the step moved on
	}

	// Record the attempt.
	var s *step
	err = e.update(ctx, job, false, func(r *run, st *step, now time.Time) error {
		s = st
		st.attempts, st.dirty = int64(job.Attempt), true
		r.emit(st.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepStarted{
			StepStarted: &orchestratorv1.StepStarted{Attempt: int32(job.Attempt)}}}, now)
		return nil
	})
	if err != nil || s == nil {
		return err
	}

	// The step's calls to the agent and memory services act for the run's tenant: the service clients mint
	// their tokens from this principal (River's job context carries none).
	ctx = principal.NewContext(ctx, principal.Principal{Tenant: r.tenant, Subject: "workflow:" + r.id, Roles: []string{"writer"}})
	out, execErr := e.execute(ctx, r, s)
	if execErr == nil {
		// Branch conditions and the output expression this success makes ready are evaluated now, outside the
		// transaction below, which only looks their values up.
		succeed := func(r *run, st *step, now time.Time) { r.succeed(st, out, now) }
		memo := e.evaluateAhead(ctx, a.RunID, a.StepID, succeed)
		return e.update(ctx, job, true, func(r *run, st *step, now time.Time) error {
			succeed(r, st, now)
			e.advanceWith(r, now, memo)
			return nil
		})
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		// Cancelled (the run was cancelled, or the process is stopping): record nothing. A cancelled run is
		// already recorded; otherwise River runs the job again.
		return execErr
	}
	// Final when the retry policy is used up by recorded failures (crash-cut attempts record none), when the
	// error is permanent, or when River would not run the job again anyway.
	final := errors.Is(execErr, errPermanent) || job.Attempt >= job.MaxAttempts
	if a.Attempts > 0 {
		final = final || int(s.failures)+1 >= a.Attempts
	}
	var cancel []int64
	err = e.update(ctx, job, final, func(r *run, st *step, now time.Time) error {
		if final {
			cancel = r.failStep(st, execErr.Error(), now)
			return nil
		}
		st.failures++
		st.err, st.dirty = execErr.Error(), true
		r.emit(st.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepRetry{
			StepRetry: &orchestratorv1.StepRetry{Attempt: int32(job.Attempt), Error: execErr.Error(),
				Backoff: durationpb.New(backoff(job.Args, job.Attempt))}}}, now)
		return nil
	})
	e.cancelJobs(context.WithoutCancel(ctx), cancel)
	if err != nil {
		return err
	}
	if final {
		return nil
	}
	return execErr
}

// update changes a running step in a transaction, after checking under the run's lock that the job is still the
// step's current one; with complete it also completes the job in that transaction.
func (e *Engine) update(ctx context.Context, job *river.Job[stepArgs], complete bool, fn func(*run, *step, time.Time) error) error {
	// The outcome must be recorded even if the attempt's context just ran out.
	ctx = context.WithoutCancel(ctx)
	return e.backend.inTx(ctx, func(tx *txn) error {
		r, err := loadRun(ctx, tx, "", job.Args.RunID, true)
		if err != nil {
			return err
		}
		s := r.byID[job.Args.StepID]
		if !r.terminal() && s != nil && s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && s.jobID == job.ID {
			if err := fn(r, s, e.now()); err != nil {
				return err
			}
			if err := e.save(ctx, tx, r); err != nil {
				return err
			}
		}
		if complete {
			return tx.complete(ctx, job)
		}
		return nil
	})
}

// expire fails an approval still waiting at its deadline, or a run still going at its deadline.
func (e *Engine) expire(ctx context.Context, job *river.Job[stepArgs]) error {
	var cancel []int64
	err := e.backend.inTx(ctx, func(tx *txn) error {
		r, err := loadRun(ctx, tx, "", job.Args.RunID, true)
		if errors.Is(err, errNoRows) {
			return tx.complete(ctx, job)
		}
		if err != nil {
			return err
		}
		if !r.terminal() {
			now := e.now()
			switch s := r.byID[job.Args.StepID]; {
			case job.Args.StepID == "":
				cancel = r.fail("run deadline exceeded", now)
			case s != nil && s.state == orchestratorv1.StepState_STEP_STATE_WAITING:
				cancel = r.failStep(s, "approval deadline exceeded", now)
			}
			if err := e.save(ctx, tx, r); err != nil {
				return err
			}
		}
		return tx.complete(ctx, job)
	})
	e.cancelJobs(ctx, cancel)
	return err
}

// advance starts every step that became ready, skips the ones that can no longer run, decides branch, parallel
// and approval steps in place, and finishes the run when every step has. It changes r in memory only.
func (e *Engine) advance(r *run, now time.Time) { e.advanceWith(r, now, nil) }

// advanceWith is advance taking the values of branch conditions and of the output expression from memo when it
// has them (see evaluateAhead); a nil memo evaluates them all.
func (e *Engine) advanceWith(r *run, now time.Time, memo *exprMemo) {
	for changed := true; changed && !r.terminal(); {
		changed = false
		for _, s := range r.steps {
			if s.state != orchestratorv1.StepState_STEP_STATE_PENDING || r.terminal() {
				continue
			}
			switch r.readiness(s) {
			case wait:
				continue
			case skip:
				s.state, s.end, s.dirty = orchestratorv1.StepState_STEP_STATE_SKIPPED, now.UnixMicro(), true
			case ready:
				e.dispatch(r, s, now, memo)
			}
			changed = true
		}
	}
	if r.terminal() {
		return
	}
	waiting, busy := false, false
	for _, s := range r.steps {
		switch s.state {
		case orchestratorv1.StepState_STEP_STATE_WAITING:
			waiting = true
		case orchestratorv1.StepState_STEP_STATE_RUNNING:
			busy = true
		}
	}
	switch {
	case busy:
		r.state = orchestratorv1.RunState_RUN_STATE_RUNNING
	case waiting:
		r.state = orchestratorv1.RunState_RUN_STATE_WAITING
	default:
		e.complete(r, now, memo)
	}
}

func (e *Engine) dispatch(r *run, s *step, now time.Time, memo *exprMemo) {
	started := func(state orchestratorv1.StepState) {
		r.start(s, state, now)
		s.attempts = 1
		r.emit(s.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepStarted{
			StepStarted: &orchestratorv1.StepStarted{Attempt: 1}}}, now)
	}
	switch k := s.def.GetKind().(type) {
	case *orchestratorv1.Step_Parallel:
		started(orchestratorv1.StepState_STEP_STATE_RUNNING)
		r.succeed(s, structpb.NewNullValue(), now)
	case *orchestratorv1.Step_Branch:
		started(orchestratorv1.StepState_STEP_STATE_RUNNING)
		v, err := memo.evaluate(r, s.id, k.Branch.GetCondition())
		if err != nil {
			r.failStep(s, err.Error(), now)
			return
		}
		if _, ok := v.GetKind().(*structpb.Value_BoolValue); !ok {
			r.failStep(s, "condition is not a bool", now)
			return
		}
		r.succeed(s, v, now)
	case *orchestratorv1.Step_Approval:
		started(orchestratorv1.StepState_STEP_STATE_WAITING)
		deadline := now.Add(durationOr(k.Approval.GetDeadline(), defaultApprovalTimeout))
		s.deadline = deadline.UnixMicro()
		r.emit(s.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_WaitingForApproval{
			WaitingForApproval: &orchestratorv1.WaitingForApproval{Prompt: k.Approval.GetPrompt(), Deadline: timestamppb.New(deadline)}}}, now)
		r.schedule(s, deadline, true)
	case *orchestratorv1.Step_Delay:
		// The job, due when the delay ends, records the attempt like any other.
		r.start(s, orchestratorv1.StepState_STEP_STATE_RUNNING, now)
		at := now.Add(k.Delay.GetDuration().AsDuration())
		if k.Delay.GetDuration().AsDuration() <= 0 {
			at = time.Time{}
		}
		r.schedule(s, at, false)
	default:
		r.start(s, orchestratorv1.StepState_STEP_STATE_RUNNING, now)
		r.schedule(s, time.Time{}, false)
	}
}

// complete finishes a run whose steps have all finished: the output expression, or the outputs of the final
// steps (one final step: its output; several: an object keyed by step id).
func (e *Engine) complete(r *run, now time.Time, memo *exprMemo) {
	var out *structpb.Value
	if expr := r.bp.GetOutput(); expr != "" {
		v, err := memo.evaluate(r, "", expr)
		if err != nil {
			r.fail("output: "+err.Error(), now)
			return
		}
		out = v
	} else {
		hasDependents := map[string]bool{}
		for _, s := range r.steps {
			for _, d := range s.def.GetDependsOn() {
				hasDependents[d] = true
			}
			if o, _ := r.owner(s); o != nil {
				hasDependents[o.id] = true
			}
		}
		final := map[string]*structpb.Value{}
		var last *structpb.Value
		for _, s := range r.steps {
			if !hasDependents[s.id] && s.state == orchestratorv1.StepState_STEP_STATE_SUCCEEDED {
				final[s.id], last = s.output, s.output
			}
		}
		if len(final) == 1 {
			out = last
		} else {
			out = structpb.NewStructValue(&structpb.Struct{Fields: final})
		}
	}
	r.output, r.state, r.ended = out, orchestratorv1.RunState_RUN_STATE_SUCCEEDED, now.UnixMicro()
	r.emit("", &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_RunCompleted{
		RunCompleted: &orchestratorv1.RunCompleted{Output: out}}}, now)
}

// execute performs the work of an agent, memory or delay step and returns its output.
func (e *Engine) execute(ctx context.Context, r *run, s *step) (*structpb.Value, error) {
	key := idempotencyKey(r.id, s.id, s.failures)
	switch k := s.def.GetKind().(type) {
	case *orchestratorv1.Step_Delay:
		return structpb.NewNullValue(), nil
	case *orchestratorv1.Step_Agent:
		input, err := evaluateText(r, k.Agent.GetInput(), nil)
		if err != nil {
			return nil, err
		}
		text, err := e.callAgent(ctx, k.Agent.GetAgent(), input, key)
		if err != nil {
			return nil, err
		}
		return structpb.NewStringValue(text), nil
	case *orchestratorv1.Step_Map:
		return e.executeMap(ctx, r, k.Map, key)
	case *orchestratorv1.Step_MemorySearch:
		query, err := evaluateText(r, k.MemorySearch.GetQuery(), nil)
		if err != nil {
			return nil, err
		}
		topK := k.MemorySearch.GetTopK()
		if topK == 0 {
			topK = 5
		}
		resp, err := e.memory.Search(ctx, &memoryv1.SearchRequest{Namespace: k.MemorySearch.GetNamespace(),
			Query: &memoryv1.SearchRequest_Text{Text: query}, TopK: topK})
		if err != nil {
			return nil, rpcError("memory search", err)
		}
		hits := &structpb.ListValue{}
		for _, h := range resp.GetHits() {
			hits.Values = append(hits.Values, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				"id":    structpb.NewStringValue(h.GetRecord().GetId()),
				"text":  structpb.NewStringValue(h.GetRecord().GetText()),
				"score": structpb.NewNumberValue(float64(h.GetScore())),
			}}))
		}
		return structpb.NewListValue(hits), nil
	case *orchestratorv1.Step_MemoryUpsert:
		text, err := evaluateText(r, k.MemoryUpsert.GetText(), nil)
		if err != nil {
			return nil, err
		}
		// The record id is derived from the run and step, so a repeated attempt overwrites instead of adding.
		id := idempotencyKey(r.id, s.id, 0)
		if _, err := e.memory.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: k.MemoryUpsert.GetNamespace(),
			Records: []*memoryv1.Record{{Id: id, Text: text}}}); err != nil {
			return nil, rpcError("memory upsert", err)
		}
		return structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"id": structpb.NewStringValue(id)}}), nil
	}
	return nil, fmt.Errorf("%w: step kind %T has no work", errPermanent, s.def.GetKind())
}

func (e *Engine) executeMap(ctx context.Context, r *run, m *orchestratorv1.MapStep, key string) (*structpb.Value, error) {
	items, err := evaluate(r, m.GetItems(), nil, false)
	if err != nil {
		return nil, err
	}
	list := items.GetListValue()
	if list == nil {
		return nil, fmt.Errorf("%w: items is not a list", errPermanent)
	}
	concurrency := int(m.GetConcurrency())
	if concurrency == 0 {
		concurrency = 4
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	outs := make([]*structpb.Value, len(list.GetValues()))
	errs := make([]error, len(outs))
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i, item := range list.GetValues() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			input, err := evaluateText(r, m.GetInput(), item)
			if err == nil {
				var text string
				text, err = e.callAgent(ctx, m.GetAgent(), input, key+"-"+strconv.Itoa(i))
				outs[i] = structpb.NewStringValue(text)
			}
			if err != nil {
				errs[i] = fmt.Errorf("item %d: %w", i, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return structpb.NewListValue(&structpb.ListValue{Values: outs}), nil
}

func (e *Engine) callAgent(ctx context.Context, agent, input, key string) (string, error) {
	resp, err := e.agents.Run(ctx, &agentv1.RunRequest{Agent: agent, Input: input, IdempotencyKey: key})
	if err != nil {
		return "", rpcError("agent "+agent, err)
	}
	switch run := resp.GetRun(); run.GetState() {
	case agentv1.RunState_RUN_STATE_SUCCEEDED:
		return run.GetOutput(), nil
	case agentv1.RunState_RUN_STATE_FAILED, agentv1.RunState_RUN_STATE_CANCELLED:
		return "", fmt.Errorf("agent %s run %s: %s %s", agent, run.GetId(), run.GetState(), run.GetError())
	default:
		// A replay of the key found the run unfinished (its first attempt was cut off): never take that as a
		// result; the step is tried again and gets the agent's real one.
		return "", fmt.Errorf("agent %s run %s is still %s", agent, run.GetId(), run.GetState())
	}
}

// rpcError marks errors that retrying will not fix as permanent.
func rpcError(what string, err error) error {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Unauthenticated,
		codes.FailedPrecondition, codes.Unimplemented, codes.OutOfRange:
		return fmt.Errorf("%s: %w: %w", what, errPermanent, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// idempotencyKey names one logical call of a step: the run, the step, and how many failures were recorded
// before it. It does not depend on River's attempt counter, so a job re-run after a crash repeats the key.
func idempotencyKey(runID, stepID string, failures int64) string {
	sum := sha256.Sum256([]byte(runID + "\x00" + stepID + "\x00" + strconv.FormatInt(failures, 10)))
	return "orch-" + hex.EncodeToString(sum[:16])
}

// evaluate runs a CEL expression over the run input, the outputs of finished steps and, for map inputs, item.
func evaluate(r *run, expr string, item *structpb.Value, withItem bool) (*structpb.Value, error) {
	env, err := blueprint.NewCELEnv(withItem || item != nil)
	if err != nil {
		return nil, err
	}
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("%w: %v", errPermanent, iss.Err())
	}
	limits := blueprint.DefaultLimits() // TODO(lead): from engine.Config once it has an Expressions field
	prg, err := limits.Program(env, ast)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errPermanent, err)
	}
	steps := map[string]any{}
	for _, s := range r.steps {
		if s.state == orchestratorv1.StepState_STEP_STATE_SUCCEEDED && s.output != nil {
			steps[s.id] = s.output.AsInterface()
		}
	}
	vars := map[string]any{"input": r.input.AsMap(), "steps": steps}
	if item != nil {
		vars["item"] = item.AsInterface()
	}
	val, err := limits.Eval(context.Background(), prg, vars)
	if errors.Is(err, blueprint.ErrCostLimit) || errors.Is(err, blueprint.ErrEvalTimeout) {
		return nil, fmt.Errorf("%w: expression %s %v", errPermanent, quoteShort(expr), err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: evaluate %q: %v", errPermanent, expr, err)
	}
	native, err := val.ConvertToNative(reflect.TypeFor[*structpb.Value]())
	if err != nil {
		return nil, fmt.Errorf("%w: evaluate %q: %v", errPermanent, expr, err)
	}
	v, ok := native.(*structpb.Value)
	if !ok {
		return nil, fmt.Errorf("%w: evaluate %q: unexpected %T", errPermanent, expr, native)
	}
	return v, nil
}

// evaluateText evaluates an expression whose value is sent as text: strings as they are, anything else as JSON.
func evaluateText(r *run, expr string, item *structpb.Value) (string, error) {
	v, err := evaluate(r, expr, item, item != nil)
	if err != nil {
		return "", err
	}
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return s.StringValue, nil
	}
	b, err := protojson.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// quoteShort quotes an expression for an error message, cut to 100 bytes.
func quoteShort(expr string) string {
	if len(expr) > 100 {
		return strconv.Quote(expr[:100]) + "..."
	}
	return strconv.Quote(expr)
}

// exprMemo holds values of branch conditions and of the output expression computed before a transaction, so the
// transaction does not evaluate CEL while it holds the database (a cost-bounded expression still takes up to
// blueprint.DefaultEvalTimeout, and on SQLite every other tenant's write waits for the transaction). A value is
// keyed by the step ("" for the output) and by the set of succeeded steps it was computed over: an expression
// reads only the input and the outputs of succeeded steps, which never change, so a value found under the same
// key is the value the transaction would compute. A miss (another step finished in between) evaluates in place.
// A nil *exprMemo evaluates everything. Not safe for concurrent use.
type exprMemo struct {
	record bool
	vals   map[string]exprResult
}

type exprResult struct {
	v   *structpb.Value
	err error
}

func (m *exprMemo) evaluate(r *run, stepID, expr string) (*structpb.Value, error) {
	if m == nil {
		return evaluate(r, expr, nil, false)
	}
	key := stepID + "\x00" + succeededKey(r)
	if res, ok := m.vals[key]; ok {
		return res.v, res.err
	}
	v, err := evaluate(r, expr, nil, false)
	if m.record {
		m.vals[key] = exprResult{v: v, err: err}
	}
	return v, err
}

// succeededKey names the set of steps whose outputs an expression can read.
func succeededKey(r *run) string {
	var b []byte
	for _, s := range r.steps {
		if s.state == orchestratorv1.StepState_STEP_STATE_SUCCEEDED && s.output != nil {
			b = append(append(b, s.id...), ',')
		}
	}
	return string(b)
}

// evaluateAhead loads the run outside any transaction, applies change to step stepID as the transaction will,
// advances it, and returns the values of the expressions that advance evaluated. It returns nil (evaluate in
// place) when the blueprint has no branch or output expression, or when the run cannot be read.
func (e *Engine) evaluateAhead(ctx context.Context, runID, stepID string, change func(*run, *step, time.Time)) *exprMemo {
	r, err := loadRun(ctx, e.reader(), "", runID, false)
	if err != nil || r.terminal() || r.byID[stepID] == nil || !hasDecisions(r.bp) {
		return nil
	}
	memo := &exprMemo{record: true, vals: map[string]exprResult{}}
	now := e.now()
	change(r, r.byID[stepID], now)
	e.advanceWith(r, now, memo)
	memo.record = false
	return memo
}

// hasDecisions reports whether advance may evaluate an expression for bp: a branch step or an output.
func hasDecisions(bp *orchestratorv1.Blueprint) bool {
	if bp.GetOutput() != "" {
		return true
	}
	for _, s := range bp.GetSteps() {
		if _, ok := s.GetKind().(*orchestratorv1.Step_Branch); ok {
			return true
		}
	}
	return false
}
