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
	"sync/atomic"
	"time"

	"cel.dev/cel-go/cel"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// crashAllowance is how many attempts cut short by a crash (kill -9 mid-step), or answered by an agent run that
// had not finished, a step survives beyond its retry policy before it fails.
const crashAllowance = 10

// backoff is the wait before the attempt after attempt: initial, doubled after each attempt, capped at max.
func backoff(d *orchestratorv1.Step, attempt int64) time.Duration {
	_, initial, limit := retryPolicy(d)
	b := initial
	for i := int64(1); i < attempt && b < limit; i++ {
		b *= 2
	}
	return min(b, limit)
}

// errPermanent marks failures that retrying cannot fix.
var errPermanent = errors.New("permanent")

// errUnfinished marks an agent run that a replayed idempotency key found still unfinished (its first call was
// cut off): the step is tried again with the same key, without counting a failure, and gets the agent's real
// result.
var errUnfinished = errors.New("agent run unfinished")

// hasWork reports whether a step kind calls out (agent, map, memory): the kinds executed in goroutines.
func hasWork(d *orchestratorv1.Step) bool {
	switch d.GetKind().(type) {
	case *orchestratorv1.Step_Agent, *orchestratorv1.Step_Map, *orchestratorv1.Step_MemorySearch, *orchestratorv1.Step_MemoryUpsert:
		return true
	}
	return false
}

// applyResult records the outcome of one step attempt: its output, a retry after a backoff, or the step's (and
// the run's) failure. An outcome for a step that is no longer running is dropped.
func (e *Engine) applyResult(r *run, res result, now time.Time) {
	s := r.byID[res.step]
	if r.terminal() || s == nil || s.state != orchestratorv1.StepState_STEP_STATE_RUNNING || s.needsAttempt {
		return
	}
	s.addUsage(res.usage)
	if res.err == nil {
		r.succeed(s, res.out, now)
		return
	}
	attempts, _, _ := retryPolicy(s.def)
	unfinished := errors.Is(res.err, errUnfinished)
	final := errors.Is(res.err, errPermanent) || int(s.attempts) >= attempts+crashAllowance
	if !unfinished {
		final = final || int(s.failures)+1 >= attempts
	}
	msg := res.err.Error()
	if final {
		r.failStep(s, msg, now)
		return
	}
	if !unfinished {
		s.failures++ // the next attempt is a new call: a new idempotency key
	}
	wait := backoff(s.def, s.attempts)
	s.err, s.deadline, s.needsAttempt, s.dirty = msg, now.Add(wait).UnixMicro(), true, true
	r.emit(s.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepRetry{
		StepRetry: &orchestratorv1.StepRetry{Attempt: int32(s.attempts), Error: msg, Backoff: durationpb.New(wait), Usage: res.usage}}}, now)
}

// fireTimers acts on what came due: a delay's end, an approval's deadline, the run's deadline.
func (e *Engine) fireTimers(r *run, now time.Time) {
	if r.terminal() {
		return
	}
	if now.After(time.UnixMicro(r.created).Add(durationOr(r.bp.GetRunDeadline(), defaultRunDeadline))) {
		r.fail("run deadline exceeded", now)
		return
	}
	for _, s := range r.steps {
		if r.terminal() {
			return
		}
		if s.deadline == 0 || s.deadline > now.UnixMicro() {
			continue
		}
		switch {
		case s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && s.def.GetDelay() != nil:
			r.succeed(s, structpb.NewNullValue(), now)
		case s.state == orchestratorv1.StepState_STEP_STATE_WAITING:
			r.failStep(s, "approval deadline exceeded", now)
		}
	}
}

// recordAttempts records the start of every attempt that is due (newly dispatched steps, retries after their
// backoff, steps found running when the run was loaded), in the commit before the attempt runs.
func (e *Engine) recordAttempts(r *run, now time.Time) {
	for _, s := range r.steps {
		if r.terminal() {
			return
		}
		if s.state != orchestratorv1.StepState_STEP_STATE_RUNNING || !hasWork(s.def) || !s.needsAttempt || s.deadline > now.UnixMicro() {
			continue
		}
		if attempts, _, _ := retryPolicy(s.def); int(s.attempts) >= attempts+crashAllowance {
			r.failStep(s, fmt.Sprintf("gave up after %d attempts that did not finish", s.attempts), now)
			return
		}
		s.attempts++
		s.needsAttempt, s.deadline, s.dirty = false, 0, true
		r.emit(s.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepStarted{
			StepStarted: &orchestratorv1.StepStarted{Attempt: int32(s.attempts)}}}, now)
	}
}

// advance starts every step that became ready, skips the ones that can no longer run, decides branch, parallel
// and approval steps in place, and finishes the run when every step has. It changes r in memory only, and
// evaluates branch conditions and the output expression: it is never called inside a transaction.
func (e *Engine) advance(r *run, now time.Time) {
	for changed := true; changed && !r.terminal(); {
		changed = false
		for _, s := range r.steps {
			if r.terminal() {
				break
			}
			if s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && s.def.GetParallel() != nil {
				// A parallel step finishes when all its members have.
				if r.membersDone(s) {
					r.succeed(s, structpb.NewNullValue(), now)
					changed = true
				}
				continue
			}
			if s.state != orchestratorv1.StepState_STEP_STATE_PENDING {
				continue
			}
			switch r.readiness(s) {
			case wait:
				continue
			case skip:
				s.state, s.end, s.dirty = orchestratorv1.StepState_STEP_STATE_SKIPPED, now.UnixMicro(), true
			case ready:
				e.dispatch(r, s, now)
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
		e.complete(r, now)
	}
}

// membersDone reports whether every member of parallel step p has finished.
func (r *run) membersDone(p *step) bool {
	members := r.expand(p.id)
	if len(members) == 0 {
		return true
	}
	for _, m := range members[1:] {
		if !stepDone(m.state) {
			return false
		}
	}
	return true
}

func (e *Engine) dispatch(r *run, s *step, now time.Time) {
	started := func(state orchestratorv1.StepState) {
		r.start(s, state, now)
		s.attempts = 1
		r.emit(s.id, &orchestratorv1.WatchRunResponse{Event: &orchestratorv1.WatchRunResponse_StepStarted{
			StepStarted: &orchestratorv1.StepStarted{Attempt: 1}}}, now)
	}
	switch k := s.def.GetKind().(type) {
	case *orchestratorv1.Step_Parallel:
		started(orchestratorv1.StepState_STEP_STATE_RUNNING)
	case *orchestratorv1.Step_Branch:
		started(orchestratorv1.StepState_STEP_STATE_RUNNING)
		v, err := e.evaluate(r, k.Branch.GetCondition(), nil)
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
	case *orchestratorv1.Step_Delay:
		started(orchestratorv1.StepState_STEP_STATE_RUNNING)
		s.deadline = now.Add(max(k.Delay.GetDuration().AsDuration(), 0)).UnixMicro()
	case *orchestratorv1.Step_Agent, *orchestratorv1.Step_Map, *orchestratorv1.Step_MemorySearch, *orchestratorv1.Step_MemoryUpsert:
		// The attempt is recorded (recordAttempts) by whoever executes it, in the same commit when that is the
		// owner dispatching it.
		r.start(s, orchestratorv1.StepState_STEP_STATE_RUNNING, now)
		s.needsAttempt = true
	default:
		// A kind added to the contract and not here (TestEveryStepKindIsExecuted catches it).
		r.failStep(s, fmt.Sprintf("step kind %T is not executed by this engine", k), now)
	}
}

// complete finishes a run whose steps have all finished: the output expression, or the outputs of the final
// steps (one final step: its output; several: an object keyed by step id).
func (e *Engine) complete(r *run, now time.Time) {
	var out *structpb.Value
	if expr := r.bp.GetOutput(); expr != "" {
		v, err := e.evaluate(r, expr, nil)
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
		RunCompleted: &orchestratorv1.RunCompleted{Output: out, Usage: r.usage()}}}, now)
}

// prepare evaluates the expressions of an agent, map or memory step (in the owner, outside any transaction) and
// returns the call that performs it, which is safe to run in a goroutine of its own.
//
// saved is the sequence of the run's last stored event (the owner's), which the live text deltas of an agent
// step follow; nil streams none.
func (e *Engine) prepare(r *run, s *step, saved *atomic.Int64) (func(context.Context) (*structpb.Value, *orchestratorv1.Usage, error), error) {
	key := idempotencyKey(r.id, s.id, s.failures)
	// The step's calls to the agent and memory services act for the run's tenant: the service clients mint
	// their tokens from this principal.
	who := principal.Principal{Tenant: r.tenant, Subject: "workflow:" + r.id, Roles: []string{"writer"}}
	switch k := s.def.GetKind().(type) {
	case *orchestratorv1.Step_Agent:
		input, err := e.evaluateText(r, k.Agent.GetInput(), nil)
		if err != nil {
			return nil, err
		}
		agent, bp := k.Agent.GetAgent(), r.blueprint
		// Chaos of the step: its attempt number is the agent run's, so a transient fault recovers after
		// fail_attempts attempts of the step.
		chaos, attempt := k.Agent.GetChaos(), int32(min(s.failures+1, 1_000_000))
		c := agentCall{agent: agent, version: k.Agent.GetAgentVersion(), input: input, key: key, blueprint: bp, chaos: chaos, attempt: attempt}
		if saved != nil {
			tenant, runID, stepID, n := r.tenant, r.id, s.id, int32(min(s.attempts, 1<<30))
			c.text = func(t string) { e.live.delta(tenant, runID, stepID, n, saved.Load(), t) }
		}
		return func(ctx context.Context) (*structpb.Value, *orchestratorv1.Usage, error) {
			text, usage, err := e.callAgent(principal.NewContext(ctx, who), c)
			if err != nil {
				return nil, usage, err
			}
			return structpb.NewStringValue(text), usage, nil
		}, nil
	case *orchestratorv1.Step_Map:
		items, err := e.evaluate(r, k.Map.GetItems(), nil)
		if err != nil {
			return nil, err
		}
		list := items.GetListValue()
		if list == nil {
			return nil, fmt.Errorf("%w: items is not a list", errPermanent)
		}
		inputs := make([]string, len(list.GetValues()))
		for i, item := range list.GetValues() {
			if inputs[i], err = e.evaluateText(r, k.Map.GetInput(), item); err != nil {
				return nil, fmt.Errorf("item %d: %w", i, err)
			}
		}
		m, bp := k.Map, r.blueprint
		return func(ctx context.Context) (*structpb.Value, *orchestratorv1.Usage, error) {
			return e.executeMap(principal.NewContext(ctx, who), m, inputs, key, bp)
		}, nil
	case *orchestratorv1.Step_MemorySearch:
		query, err := e.evaluateText(r, k.MemorySearch.GetQuery(), nil)
		if err != nil {
			return nil, err
		}
		topK := k.MemorySearch.GetTopK()
		if topK == 0 {
			topK = 5
		}
		ns := k.MemorySearch.GetNamespace()
		return func(ctx context.Context) (*structpb.Value, *orchestratorv1.Usage, error) {
			resp, err := e.memory.Search(principal.NewContext(ctx, who), &memoryv1.SearchRequest{Namespace: ns,
				Query: &memoryv1.SearchRequest_Text{Text: query}, TopK: topK})
			if err != nil {
				return nil, nil, rpcError("memory search", err)
			}
			hits := &structpb.ListValue{}
			for _, h := range resp.GetHits() {
				hits.Values = append(hits.Values, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
					"id":    structpb.NewStringValue(h.GetRecord().GetId()),
					"text":  structpb.NewStringValue(h.GetRecord().GetText()),
					"score": structpb.NewNumberValue(float64(h.GetScore())),
				}}))
			}
			return structpb.NewListValue(hits), nil, nil
		}, nil
	case *orchestratorv1.Step_MemoryUpsert:
		text, err := e.evaluateText(r, k.MemoryUpsert.GetText(), nil)
		if err != nil {
			return nil, err
		}
		// The record id is derived from the run and step, so a repeated attempt overwrites instead of adding.
		id := idempotencyKey(r.id, s.id, 0)
		ns := k.MemoryUpsert.GetNamespace()
		return func(ctx context.Context) (*structpb.Value, *orchestratorv1.Usage, error) {
			if _, err := e.memory.Upsert(principal.NewContext(ctx, who), &memoryv1.UpsertRequest{Namespace: ns,
				Records: []*memoryv1.Record{{Id: id, Text: text}}}); err != nil {
				return nil, nil, rpcError("memory upsert", err)
			}
			return structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"id": structpb.NewStringValue(id)}}), nil, nil
		}, nil
	}
	return nil, fmt.Errorf("%w: step kind %T has no work", errPermanent, s.def.GetKind())
}

func (e *Engine) executeMap(ctx context.Context, m *orchestratorv1.MapStep, inputs []string, key, bp string) (*structpb.Value, *orchestratorv1.Usage, error) {
	concurrency := int(m.GetConcurrency())
	if concurrency == 0 {
		concurrency = 4
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	outs := make([]*structpb.Value, len(inputs))
	errs := make([]error, len(outs))
	usages := make([]*orchestratorv1.Usage, len(outs))
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i, input := range inputs {
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
			text, usage, err := e.callAgent(ctx, agentCall{agent: m.GetAgent(), version: m.GetAgentVersion(), input: input, key: key + "-" + strconv.Itoa(i), blueprint: bp})
			outs[i], usages[i] = structpb.NewStringValue(text), usage
			if err != nil {
				errs[i] = fmt.Errorf("item %d: %w", i, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	var total *orchestratorv1.Usage
	for _, u := range usages {
		total = addUsage(total, u)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, total, err
	}
	return structpb.NewListValue(&structpb.ListValue{Values: outs}), total, nil
}

// rpcError marks errors that retrying will not fix as permanent.
func rpcError(what string, err error) error {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Unauthenticated,
		codes.FailedPrecondition, codes.Unimplemented, codes.OutOfRange:
		return fmt.Errorf("%s: %w: %w", what, errPermanent, err)
	case codes.ResourceExhausted:
		if budgetExhausted(err) { // a spending budget, not a rate limit: retrying spends more or fails again
			return fmt.Errorf("%s: %w: %w", what, errPermanent, err)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// idempotencyKey names one logical call of a step: the run, the step, and how many failures were recorded
// before it. It does not depend on River's attempt counter, so a job re-run after a crash repeats the key.
func idempotencyKey(runID, stepID string, failures int64) string {
	sum := sha256.Sum256([]byte(runID + "\x00" + stepID + "\x00" + strconv.FormatInt(failures, 10)))
	return "orch-" + hex.EncodeToString(sum[:16])
}

// evaluate runs a CEL expression over the run input, the outputs of finished steps and, for map inputs, item,
// within the engine's expression limits.
func (e *Engine) evaluate(r *run, expr string, item *structpb.Value) (*structpb.Value, error) {
	prg, err := e.program(expr, item != nil)
	if err != nil {
		return nil, err
	}
	limits := e.cfg.Expressions
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

// programs caches compiled expressions (compiling one costs more than a durable commit); it is emptied when it
// holds maxPrograms.
type programs struct {
	mu sync.Mutex
	m  map[string]compiled
}

type compiled struct {
	prg cel.Program
	err error
}

const maxPrograms = 4096

// program compiles expr (with or without the map item variable) once; a cel.Program is safe for concurrent use.
func (e *Engine) program(expr string, withItem bool) (cel.Program, error) {
	key := expr
	if withItem {
		key = "\x00item\x00" + expr
	}
	e.progs.mu.Lock()
	c, ok := e.progs.m[key]
	e.progs.mu.Unlock()
	if ok {
		return c.prg, c.err
	}
	c.prg, c.err = e.compile(expr, withItem)
	e.progs.mu.Lock()
	if e.progs.m == nil || len(e.progs.m) >= maxPrograms {
		e.progs.m = make(map[string]compiled)
	}
	e.progs.m[key] = c
	e.progs.mu.Unlock()
	return c.prg, c.err
}

func (e *Engine) compile(expr string, withItem bool) (cel.Program, error) {
	env, err := blueprint.NewCELEnv(withItem)
	if err != nil {
		return nil, err
	}
	ast, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("%w: %v", errPermanent, iss.Err())
	}
	prg, err := e.cfg.Expressions.Program(env, ast)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errPermanent, err)
	}
	return prg, nil
}

// evaluateText evaluates an expression whose value is sent as text: strings as they are, anything else as JSON.
func (e *Engine) evaluateText(r *run, expr string, item *structpb.Value) (string, error) {
	v, err := e.evaluate(r, expr, item)
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
