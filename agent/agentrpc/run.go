package agentrpc

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/protolimit"
	"github.com/loom-dev/loom/internal/telemetry"
)

const (
	defaultMaxSteps    = 8
	defaultMaxDuration = 5 * time.Minute
	defaultTopK        = 5
	// finishTimeout bounds storing a run's final state, which happens even after the caller went away.
	finishTimeout = 10 * time.Second
)

var (
	// errCancelRequested is the cancel cause of a run stopped by CancelRun.
	errCancelRequested = fmt.Errorf("cancelled by CancelRun: %w", context.Canceled)
	// errClientGone is the cancel cause of a streamed run whose client stopped receiving.
	errClientGone = fmt.Errorf("client went away: %w", context.Canceled)
)

// errLoggedInternal replaces a server fault that was already logged, so the handler edge does not log it again.
var errLoggedInternal = errors.New("internal error")

// budgetError ends a run that exhausted one of its budgets. The run fails; the RPC itself succeeds.
type budgetError struct{ msg string }

func (e *budgetError) Error() string { return e.msg }

// runOpts are a run request's options beyond its agent and input.
type runOpts struct {
	// chaos replaces the agent's chaos when set.
	chaos *agentv1.Chaos
	// attempt is the caller's attempt number; 0 counts earlier runs of the agent with the same input.
	attempt int32
	// blueprint is the workflow's blueprint that started the run (usage accounting only).
	blueprint string
	// agentVersion is the agent version to run; 0 means the latest.
	agentVersion int64
	// clientTools are the run request's own client tools (see clienttools.go).
	clientTools []*agentv1.ClientTool
}

// emitFunc sends one event of a streamed run. Unary runs pass nil.
type emitFunc func(*agentv1.RunStreamResponse) error

// Run implements agentv1connect.AgentServiceHandler. A run that exhausts a budget is returned FAILED; a failing
// model provider answers Unavailable (the failed run stays readable with GetRun).
func (s *Server) Run(ctx context.Context, req *connect.Request[agentv1.RunRequest]) (*connect.Response[agentv1.RunResponse], error) {
	tenant := principal.TenantOf(ctx)
	run, err := s.startRun(ctx, tenant, req.Msg.GetAgent(), req.Msg.GetInput(), req.Msg.GetAttachments(), req.Msg.GetIdempotencyKey(),
		runOpts{chaos: req.Msg.GetChaos(), attempt: req.Msg.GetAttempt(), blueprint: req.Msg.GetBlueprint(), agentVersion: req.Msg.GetAgentVersion(), clientTools: req.Msg.GetClientTools()}, nil)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.RunResponse{Run: run}), nil
}

// RunStream implements agentv1connect.AgentServiceHandler. Events follow the run: started, memory hits or a
// warning, then per step text deltas, usage, tool calls and results, and last completed or failed.
func (s *Server) RunStream(ctx context.Context, req *connect.Request[agentv1.RunStreamRequest], stream *connect.ServerStream[agentv1.RunStreamResponse]) error {
	tenant := principal.TenantOf(ctx)
	_, err := s.startRun(ctx, tenant, req.Msg.GetAgent(), req.Msg.GetInput(), req.Msg.GetAttachments(), req.Msg.GetIdempotencyKey(),
		runOpts{chaos: req.Msg.GetChaos(), attempt: req.Msg.GetAttempt(), blueprint: req.Msg.GetBlueprint(), agentVersion: req.Msg.GetAgentVersion(), clientTools: req.Msg.GetClientTools()}, stream.Send)
	return s.connectError(ctx, err)
}

// GetRun implements agentv1connect.AgentServiceHandler.
func (s *Server) GetRun(ctx context.Context, req *connect.Request[agentv1.GetRunRequest]) (*connect.Response[agentv1.GetRunResponse], error) {
	tenant := principal.TenantOf(ctx)
	if ar := s.active(tenant, req.Msg.GetId()); ar != nil {
		_ = ar.record.wait(ctx) // a run starting here is readable once recorded; a failed record reads NotFound
	}
	run, err := s.getRun(ctx, tenant, req.Msg.GetId())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.GetRunResponse{Run: run}), nil
}

// ListRuns implements agentv1connect.AgentServiceHandler.
func (s *Server) ListRuns(ctx context.Context, req *connect.Request[agentv1.ListRunsRequest]) (*connect.Response[agentv1.ListRunsResponse], error) {
	tenant := principal.TenantOf(ctx)
	f := agent.RunFilter{Agent: req.Msg.GetAgent()}
	if ts := req.Msg.GetStartTime(); ts != nil {
		f.Start = ts.AsTime()
	}
	if ts := req.Msg.GetEndTime(); ts != nil {
		f.End = ts.AsTime()
	}
	runs, next, err := s.store.ListRuns(ctx, tenant, f, pageSize(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.ListRunsResponse{Runs: runs, NextPageToken: next}), nil
}

// CancelRun implements agentv1connect.AgentServiceHandler. A run executing in this process is stopped (its model
// call and tools are cancelled) and waited for; a run recorded as RUNNING but not executing here (another replica,
// or one that crashed) is marked CANCELLED in the store, and its owner's final write is then refused.
func (s *Server) CancelRun(ctx context.Context, req *connect.Request[agentv1.CancelRunRequest]) (*connect.Response[agentv1.CancelRunResponse], error) {
	tenant := principal.TenantOf(ctx)
	id := req.Msg.GetId()
	if ar := s.active(tenant, id); ar != nil {
		ar.cancel(errCancelRequested)
		select {
		case <-ar.done:
		case <-ctx.Done():
			return nil, s.connectError(ctx, ctx.Err())
		}
		run, err := s.store.GetRun(ctx, tenant, id)
		if err != nil {
			return nil, s.connectError(ctx, err)
		}
		return connect.NewResponse(&agentv1.CancelRunResponse{Run: run}), nil
	}
	run, err := s.getRun(ctx, tenant, id)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	if run.GetState() == agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS {
		run, err = s.cancelWaiting(ctx, tenant, run)
		if err != nil {
			return nil, s.connectError(ctx, err)
		}
		return connect.NewResponse(&agentv1.CancelRunResponse{Run: run}), nil
	}
	if run.GetState() != agentv1.RunState_RUN_STATE_RUNNING {
		return nil, s.connectError(ctx, finishedError(run))
	}
	run.State, run.Error, run.EndTime = agentv1.RunState_RUN_STATE_CANCELLED, "cancelled", timestamppb.Now()
	if err := s.store.FinishRun(ctx, tenant, run); err != nil {
		if errors.Is(err, agent.ErrConflict) {
			if run, err2 := s.store.GetRun(ctx, tenant, id); err2 == nil {
				err = finishedError(run)
			}
		}
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.CancelRunResponse{Run: run}), nil
}

func finishedError(run *agentv1.Run) error {
	return agent.PreconditionError(fmt.Sprintf("run %s already finished: %s", run.GetId(),
		strings.TrimPrefix(run.GetState().String(), "RUN_STATE_")))
}

func (s *Server) active(tenant, id string) *activeRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running[tenant+"/"+id]
}

// startRun runs agentName for a caller, honouring the idempotency key. On success (including a run that failed
// on a budget) it returns the run and nil; otherwise the error says why, with the run id when one was created.
// Attachments go to the model with input but are not stored, so a replay matches on input alone; ones the
// agent's provider cannot take fail with a *FieldError before the run is recorded or any model is called.
func (s *Server) startRun(ctx context.Context, tenant, agentName, input string, atts []*agentv1.Attachment, key string, opts runOpts, emit emitFunc) (*agentv1.Run, error) {
	if key != "" {
		prev, err := s.store.GetRunByIdempotencyKey(ctx, tenant, key)
		if err == nil {
			return s.replay(ctx, tenant, prev, agentName, input, emit)
		}
		if !errors.Is(err, agent.ErrNotFound) {
			return nil, err
		}
	}
	// A pinned version that does not exist is NotFound naming it (the store's error).
	a, err := s.store.GetAgent(ctx, tenant, agentName, opts.agentVersion)
	if err != nil {
		return nil, err
	}
	if a, err = withClientTools(a, opts); err != nil {
		return nil, err
	}
	if err := s.checkAttachments(a.GetModel().GetProvider(), atts); err != nil {
		return nil, err
	}
	run, err := s.execute(ctx, tenant, a, input, modelAttachments(atts), key, []string{a.GetName()}, opts, emit)
	if run == nil && key != "" && errors.Is(err, agent.ErrAlreadyExists) {
		// A concurrent call with the same key won the race.
		prev, err := s.store.GetRunByIdempotencyKey(ctx, tenant, key)
		if err != nil {
			return nil, err
		}
		return s.replay(ctx, tenant, prev, agentName, input, emit)
	}
	if err != nil && run != nil {
		return run, fmt.Errorf("run %s: %w", run.GetId(), err)
	}
	return run, err
}

// replay answers a repeated idempotency key with the stored run, waiting for it if it still runs here.
func (s *Server) replay(ctx context.Context, tenant string, run *agentv1.Run, agentName, input string, emit emitFunc) (*agentv1.Run, error) {
	if run.GetAgent() != agentName || run.GetInput() != input {
		return nil, &agent.FieldError{Field: "idempotency_key", Reason: "already used for a different agent or input"}
	}
	// Still running, here or on another replica (or cut off by a crash, until Maintain fails it): wait for its
	// end, so a caller retrying after a disconnect gets the real result.
	run, err := s.waitStored(ctx, tenant, run)
	if err != nil {
		return nil, err
	}
	if emit != nil {
		_ = emit(&agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Started{
			Started: &agentv1.RunStarted{AgentVersion: run.GetAgentVersion()}}})
		_ = emit(finalEvent(run))
	}
	return run, nil
}

func finalEvent(run *agentv1.Run) *agentv1.RunStreamResponse {
	switch run.GetState() {
	case agentv1.RunState_RUN_STATE_SUCCEEDED:
		return &agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Completed{Completed: run}}
	case agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS:
		return &agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Waiting{Waiting: run}}
	}
	return &agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Failed{Failed: run}}
}

// execute records a new run of a and drives it to its end; atts go with input to the model and are not recorded.
// It returns the finished run, or nil when the run could not be recorded; and the error that failed it, or nil
// when it succeeded or exhausted a budget.
func (s *Server) execute(ctx context.Context, tenant string, a *agentv1.Agent, input string, atts []model.Attachment, key string, chain []string, opts runOpts, emit emitFunc) (*agentv1.Run, error) {
	provider := a.GetModel().GetProvider()
	if provider == agentv1.Provider_PROVIDER_UNSPECIFIED {
		provider = agentv1.Provider_PROVIDER_SIM
	}
	modelName := a.GetModel().GetName()
	if p, _, ok := s.cfg.Models.Lookup(providerOf(provider)); ok && p.Local {
		modelName = providerOf(provider) // the agent's model name means nothing to a local provider
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("run id: %w", err)
	}
	mtr := s.meterFor(provider, modelName)
	run := &agentv1.Run{Id: id.String(), Agent: a.GetName(), AgentVersion: a.GetVersion(),
		State: agentv1.RunState_RUN_STATE_RUNNING, Input: input, Provider: provider, Model: modelName,
		Usage: mtr.usage(model.Usage{}), CreateTime: timestamppb.Now(), IdempotencyKey: key, Blueprint: opts.blueprint,
		Price: mtr.priceProto()}
	// Chaos, when asked for: its seed and the attempt, drawn now and recorded as a warning so the run can be
	// replayed exactly.
	var chaos *chaosModel
	attempt := opts.attempt
	c := chaosFor(a, opts.chaos)
	if attempt <= 0 && (c != nil || a.GetModel().GetSim().GetFailureRate() > 0) {
		n, err := s.store.CountRuns(ctx, tenant, a.GetName(), input)
		if err != nil {
			return nil, err
		}
		attempt = int32(min(n+1, 1<<30))
	}
	if c != nil {
		seed := c.GetSeed()
		if seed == 0 {
			seed = rand.Uint64()
		}
		chaos = &chaosModel{c: c, seed: seed, attempt: attempt}
		run.Warnings = append(run.Warnings, fmt.Sprintf("chaos: injecting faults (seed %d, attempt %d)", seed, attempt))
	}
	rec, err := s.recordRun(ctx, tenant, run) // see record.go: the first model call does not wait for it
	if err != nil {
		return nil, err
	}
	return s.drive(ctx, tenant, a, run, key, emit, runEnv{tenant: tenant, agent: a, runID: run.GetId(), chain: chain,
		attachments: atts, chaos: chaos, attempt: attempt, meter: mtr, record: rec})
}

// drive executes run, recorded RUNNING and leased to this process, to its end or to a wait for client tools (a
// new run, or one resumed with env.resume set), and stores where it stopped. It returns as execute does.
func (s *Server) drive(ctx context.Context, tenant string, a *agentv1.Agent, run *agentv1.Run, key string, emit emitFunc, env runEnv) (*agentv1.Run, error) {
	provider, chaos := run.GetProvider(), env.chaos

	// A run with an idempotency key outlives its caller's connection: a caller that went away (an orchestrator
	// killed mid-step, a dropped stream) retries with the same key and must get this run's real result, not a
	// CANCELLED run that would make it run the agent, and its tools, again under a new key. Such a run still ends
	// at the caller's deadline, at its own time budget, or by CancelRun. A run without a key has nobody to come
	// back for it and stops when its caller goes.
	base := ctx
	if key != "" {
		base = context.WithoutCancel(ctx)
		if d, ok := ctx.Deadline(); ok {
			var cancelD context.CancelFunc
			base, cancelD = context.WithDeadline(base, d)
			defer cancelD()
		}
		if emit != nil {
			inner, gone := emit, false // emit is only called from this run's goroutine (and its delegations')
			emit = func(ev *agentv1.RunStreamResponse) error {
				if !gone && inner(ev) != nil {
					gone = true // the stream is gone; the run goes on, silently
				}
				return nil
			}
		}
	}
	runCtx, cancel := context.WithCancelCause(base)
	defer cancel(nil)
	maxDur := a.GetBudgets().GetMaxDuration().AsDuration()
	if maxDur <= 0 {
		maxDur = defaultMaxDuration
	}
	env.started = time.Now()
	runCtx, cancelT := context.WithTimeoutCause(runCtx, maxDur-env.resume.elapsed(), &budgetError{fmt.Sprintf("time budget of %v exhausted", maxDur)})
	defer cancelT()

	ar := &activeRun{cancel: cancel, done: make(chan struct{}), record: env.record}
	key2 := tenant + "/" + run.GetId()
	s.mu.Lock()
	s.running[key2] = ar
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.running, key2)
		s.mu.Unlock()
		close(ar.done)
	}()

	send := func(ev *agentv1.RunStreamResponse) {
		if emit == nil {
			return
		}
		ev.RunId = run.GetId()
		if err := emit(ev); err != nil {
			cancel(errClientGone)
		}
	}
	send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Started{Started: &agentv1.RunStarted{AgentVersion: a.GetVersion()}}})

	env.emit = emit
	env.schemas = map[string]compiledSchema{}
	defer s.budgets.finish(tenant, run.GetId())
	if chaos != nil && env.resume == nil {
		send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Warning{Warning: &agentv1.Warning{Message: run.Warnings[len(run.Warnings)-1]}}})
	}
	loopErr := s.loop(runCtx, env, run, send)
	if w := (*waitError)(nil); errors.As(loopErr, &w) {
		return s.park(ctx, tenant, run, env, w, send)
	}

	var (
		budget *budgetError
		spent  *exhaustedError
	)
	switch {
	case loopErr == nil:
		run.State = agentv1.RunState_RUN_STATE_SUCCEEDED
	case errors.As(loopErr, &spent):
		run.State, run.Error = agentv1.RunState_RUN_STATE_FAILED, spent.msg
		s.cfg.Metrics.BudgetExhausted(tenant, spent.budget)
	case errors.As(loopErr, &budget):
		run.State, run.Error, loopErr = agentv1.RunState_RUN_STATE_FAILED, budget.msg, nil
	case errors.Is(loopErr, context.Canceled), errors.Is(loopErr, context.DeadlineExceeded):
		run.State, run.Error = agentv1.RunState_RUN_STATE_CANCELLED, "cancelled"
		if errors.Is(loopErr, context.DeadlineExceeded) {
			run.Error = "cancelled: the caller's deadline passed"
		}
	case errors.Is(loopErr, model.ErrUnavailable), errors.Is(loopErr, model.ErrNotConfigured), errors.Is(loopErr, agent.ErrFailedPrecondition):
		run.State, run.Error = agentv1.RunState_RUN_STATE_FAILED, loopErr.Error()
	default:
		s.logger.ErrorContext(ctx, "agent: run failed", "run", run.GetId(), "err", loopErr)
		run.State, run.Error, loopErr = agentv1.RunState_RUN_STATE_FAILED, "internal error", errLoggedInternal
	}
	run.EndTime = timestamppb.Now()
	// Provider error text may quote a key: nothing of it is stored, streamed, returned or logged unscrubbed.
	run.Error = s.scrub.String(run.Error)
	var pf *providerFault
	if errors.As(loopErr, &pf) { // chaos, which names its own provider and code
		loopErr = &providerFault{provider: pf.provider, code: pf.code, err: s.scrub.Err(loopErr)}
	} else {
		loopErr = markProvider(providerOf(provider), s.scrub.Err(loopErr))
	}

	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer fcancel()
	if err := s.finish(fctx, tenant, env.record, run); err != nil {
		if errors.Is(err, errNotRecorded) {
			return nil, err // never recorded: the run does not exist
		}
		if !errors.Is(err, agent.ErrConflict) {
			return run, err
		}
		// CancelRun from another replica finished it first; its state stands.
		if stored, err := s.store.GetRun(fctx, tenant, run.GetId()); err == nil {
			run = stored
		}
	}
	if spent != nil { // our own message, nothing to scrub; the handler edge reads the budget and the run from it
		spent.run, loopErr = run, spent
	}
	send(finalEvent(run))
	return run, loopErr
}

// loop is the run loop: memory retrieval, then model calls and tool calls until the model answers without
// calling tools or a budget runs out.
func (s *Server) loop(ctx context.Context, env runEnv, run *agentv1.Run, send func(*agentv1.RunStreamResponse)) error {
	a := env.agent
	system := a.GetInstructions()
	if a.GetMemory().GetNamespace() != "" && env.resume == nil {
		system += s.retrieve(ctx, env, a, run, send)
	}
	m, err := s.modelFor(ctx, env.tenant, a, run.GetInput(), env.attempt)
	if err != nil {
		return err
	}
	if env.chaos != nil {
		env.chaos.m = m
		m = env.chaos
	}
	var temperature *float32
	if a.GetModel() != nil { // an agent created without a model runs on the sim default
		temperature = a.GetModel().Temperature
	}
	if slices.ContainsFunc(a.GetTools(), func(t *agentv1.Tool) bool { return t.GetMcp() != nil }) {
		env.mcp = &mcpRun{s: s, tenant: env.tenant}
		defer env.mcp.close()
		for _, w := range env.mcp.describe(ctx, a) {
			w = s.scrub.String(w)
			run.Warnings = append(run.Warnings, w)
			send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Warning{Warning: &agentv1.Warning{Message: w}}})
		}
	}
	req := model.Request{
		Model: a.GetModel().GetName(), System: system, Tools: toolSpecs(env, a),
		Temperature: temperature, MaxOutputTokens: a.GetModel().GetMaxOutputTokens(),
		Messages: []model.Message{{Role: model.RoleUser, Text: run.GetInput(), Attachments: env.attachments}},
	}
	first, seen := s.resumeLoop(env, run, &req, send) // step 0 and no calls seen, unless the run resumes
	maxSteps := int(a.GetBudgets().GetMaxSteps())
	if maxSteps <= 0 {
		maxSteps = defaultMaxSteps
	}
	maxTokens := a.GetBudgets().GetMaxTokens()
	for step := first; ; step++ {
		if step >= maxSteps {
			return &budgetError{fmt.Sprintf("step budget exhausted: %d model calls without a final answer", maxSteps)}
		}
		if err := s.checkBudgets(ctx, env, run, nil, true); err != nil {
			return err
		}
		st := &agentv1.Step{Index: int32(step), Usage: env.meter.usage(model.Usage{})}
		run.Steps = append(run.Steps, st)
		var (
			text  strings.Builder
			calls []model.ToolCall
		)
		start := time.Now()
		// One span per model call, in the GenAI semantic conventions (a no-op outside a traced call).
		mctx, call := telemetry.StartModelCall(ctx, s.genAISystem(a.GetModel().GetProvider()), cmp.Or(req.Model, "sim"))
		for c, err := range m.Stream(mctx, req) {
			if err != nil {
				st.Text, st.Latency = text.String(), durationpb.New(time.Since(start))
				call.End(-1, -1, err)
				if ctx.Err() != nil {
					return context.Cause(ctx)
				}
				return err
			}
			switch c.Kind {
			case model.ChunkText:
				text.WriteString(c.Text)
				send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_TextDelta{TextDelta: &agentv1.TextDelta{Text: c.Text}}})
			case model.ChunkToolCall:
				tc := *c.ToolCall
				for seen[tc.ID] || tc.ID == "" {
					tc.ID = fmt.Sprintf("%s_%d", tc.ID, step)
				}
				seen[tc.ID] = true
				calls = append(calls, tc)
			case model.ChunkUsage:
				st.Usage = env.meter.usage(c.Usage)
			}
		}
		st.Text, st.Latency = text.String(), durationpb.New(time.Since(start))
		call.End(st.Usage.GetInputTokens(), st.Usage.GetOutputTokens(), nil)
		s.cfg.Metrics.AddTokens(env.tenant, providerOf(a.GetModel().GetProvider()), cmp.Or(req.Model, "sim"), st.Usage.GetInputTokens(), st.Usage.GetOutputTokens())
		s.countCost(env.tenant, a, cmp.Or(req.Model, "sim"), st.Usage)
		addUsage(run.Usage, st.Usage)
		if env.emit != nil { // a unary run skips building the event
			send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Usage{Usage: st.Usage}, RunUsage: proto.CloneOf(run.Usage)})
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err := s.checkBudgets(ctx, env, run, st.Usage, false); err != nil {
			return err
		}
		if total := run.Usage.InputTokens + run.Usage.OutputTokens; maxTokens > 0 && total > maxTokens {
			return &budgetError{fmt.Sprintf("token budget exhausted: %d tokens used, budget %d", total, maxTokens)}
		}
		if len(calls) == 0 {
			run.Output = st.Text
			return nil
		}
		req.Messages = append(req.Messages, model.Message{Role: model.RoleAssistant, Text: st.Text, ToolCalls: calls})
		var pending []model.ToolCall // client tool calls: the run waits for them after the others ran
		for _, c := range calls {
			pc := &agentv1.ToolCall{Id: c.ID, Name: c.Name}
			pc.Arguments, _ = structpb.NewStruct(c.Args) // arguments that are not JSON stay unset in the record
			if protolimit.CheckStruct(pc.Arguments, "arguments", protolimit.MaxDepth) != nil {
				pc.Arguments = nil // nested too deeply to be read back once stored; the tool refuses the call anyway
			}
			st.ToolCalls = append(st.ToolCalls, pc)
			send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_ToolCall{ToolCall: pc}})
			if s.waitsFor(env, c) {
				pending = append(pending, c)
				continue
			}
			if err := env.record.wait(ctx); err != nil { // a tool may have effects: the run is recorded first
				return err
			}
			res := s.callTool(ctx, env, c)
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			st.ToolResults = append(st.ToolResults, res)
			if u := res.GetUsage(); u != nil { // a delegated run's, rolled up into this step and the run
				if st.DelegatedUsage == nil {
					st.DelegatedUsage = env.meter.usage(model.Usage{})
				}
				addUsage(st.DelegatedUsage, u)
				addUsage(run.Usage, u)
			}
			send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_ToolResult{ToolResult: res}})
			req.Messages = append(req.Messages, model.Message{Role: model.RoleTool, ToolCallID: c.ID, ToolName: c.Name, Text: resultJSON(res)})
		}
		if st.DelegatedUsage != nil {
			if err := s.checkBudgets(ctx, env, run, nil, false); err != nil {
				return err
			}
		}
		if len(pending) > 0 {
			return &waitError{req: req, step: step, seen: seen, calls: pending}
		}
	}
}

// retrieve searches the agent's memory for the run input and returns the context to add to the system
// instructions. On failure or timeout the run goes on without memory, with a warning.
func (s *Server) retrieve(ctx context.Context, env runEnv, a *agentv1.Agent, run *agentv1.Run, send func(*agentv1.RunStreamResponse)) string {
	warn := func(msg string) {
		msg = s.scrub.String(msg)
		run.Warnings = append(run.Warnings, msg)
		send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Warning{Warning: &agentv1.Warning{Message: msg}}})
	}
	if s.memory == nil {
		warn("memory is not configured on this server; continuing without memory")
		return ""
	}
	if env.chaos.memoryFault() {
		warn("memory search failed (chaos: injected); continuing without memory")
		return ""
	}
	topK := a.GetMemory().GetTopK()
	if topK <= 0 {
		topK = defaultTopK
	}
	mctx, cancel := context.WithTimeout(ctx, s.cfg.MemoryTimeout)
	defer cancel()
	resp, err := s.memory.Search(mctx, &memoryv1.SearchRequest{
		Namespace: a.GetMemory().GetNamespace(),
		Query:     &memoryv1.SearchRequest_Text{Text: truncateBytes(run.GetInput(), 65536)},
		TopK:      topK,
		MinScore:  a.GetMemory().MinScore,
	})
	if err != nil {
		if ctx.Err() != nil {
			return "" // the run itself ends; the loop reports why
		}
		warn(fmt.Sprintf("memory search failed (%s); continuing without memory", status.Code(err)))
		return ""
	}
	hits := &agentv1.MemoryHits{}
	var b strings.Builder
	for _, h := range resp.GetHits() {
		hits.Hits = append(hits.Hits, &agentv1.MemoryHit{Id: h.GetRecord().GetId(), Text: h.GetRecord().GetText(), Score: h.GetScore()})
		fmt.Fprintf(&b, "\n- %s", h.GetRecord().GetText())
	}
	send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_MemoryHits{MemoryHits: hits}})
	if b.Len() == 0 {
		return ""
	}
	return "\n\nRelevant memories, most relevant first:" + b.String()
}

// genAISystem is a provider's gen_ai.system value (OpenTelemetry GenAI semantic conventions), as its registry
// entry gives it.
func (s *Server) genAISystem(p agentv1.Provider) string {
	name := providerOf(p)
	if prov, _, ok := s.cfg.Models.Lookup(name); ok {
		return prov.System
	}
	return name
}

// modelFor returns the model of a from its provider's registry entry, with tenant's own provider key when it has
// one, behind tenant's breaker for the provider (local providers such as the sim have neither). The run's seed
// follows from the input and the attempt (attempts after the first draw anew), so a sim run's behaviour follows
// from its agent, input and attempt, and a failure_rate fault can recover on a retry.
func (s *Server) modelFor(ctx context.Context, tenant string, a *agentv1.Agent, input string, attempt int32) (model.Model, error) {
	name := providerOf(a.GetModel().GetProvider())
	p, ep, ok := s.cfg.Models.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("model provider %q is not available on this server: %w", name, model.ErrNotConfigured)
	}
	seed := model.SeedFrom(input)
	if attempt > 1 {
		seed ^= uint64(attempt) * 0x9e3779b97f4a7c15
	}
	opts := model.Options{Endpoint: ep, HTTPClient: s.cfg.HTTPClient, Sim: a.GetModel().GetSim(), Seed: seed}
	if p.Local {
		return p.New(opts), nil
	}
	key, err := s.providerKey(ctx, tenant, name, ep.APIKey)
	if err != nil {
		return nil, err
	}
	opts.APIKey = key
	return guardedModel{s: s, m: p.New(opts), tenant: tenant, provider: name}, nil
}

// checkAttachments refuses attachments the provider cannot take, as its registry entry's CheckAttachment says
// (OpenAI-compatible endpoints take images and only some audio types; the sim and Gemini take every type the
// contract allows).
func (s *Server) checkAttachments(provider agentv1.Provider, atts []*agentv1.Attachment) error {
	p, _, ok := s.cfg.Models.Lookup(providerOf(provider))
	if !ok || p.CheckAttachment == nil {
		return nil // an unregistered provider fails the run before any model call
	}
	for i, a := range atts {
		if reason := p.CheckAttachment(a.GetMimeType()); reason != "" {
			return &agent.FieldError{Field: fmt.Sprintf("attachments[%d].mime_type", i), Reason: reason}
		}
	}
	return nil
}

func modelAttachments(atts []*agentv1.Attachment) []model.Attachment {
	if len(atts) == 0 {
		return nil
	}
	out := make([]model.Attachment, len(atts))
	for i, a := range atts {
		out[i] = model.Attachment{MIMEType: a.GetMimeType(), Data: a.GetData()}
	}
	return out
}

func resultJSON(res *agentv1.ToolResult) string {
	var v any = map[string]any{"error": res.GetError()}
	if res.GetError() == "" {
		v = res.GetResult().AsMap()
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the model reads this; "->" should stay "->"
	if err := enc.Encode(v); err != nil {
		return `{"error":"result not encodable"}`
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// publicMessage is an error's text when it is safe to show (client mistakes, provider failures), else generic.
func publicMessage(err error) string {
	var budget *budgetError
	switch {
	case errors.Is(err, agent.ErrInvalidArgument), errors.Is(err, agent.ErrNotFound), errors.Is(err, agent.ErrFailedPrecondition),
		errors.Is(err, model.ErrUnavailable), errors.Is(err, model.ErrNotConfigured), errors.As(err, &budget),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err.Error()
	}
	return "internal error"
}

func truncateBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
