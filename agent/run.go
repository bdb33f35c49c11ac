package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/protolimit"
	"github.com/loom-dev/loom/internal/secrets"
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

// emitFunc sends one event of a streamed run. Unary runs pass nil.
type emitFunc func(*agentv1.RunStreamResponse) error

// Run implements agentv1connect.AgentServiceHandler. A run that exhausts a budget is returned FAILED; a failing
// model provider answers Unavailable (the failed run stays readable with GetRun).
func (s *Server) Run(ctx context.Context, req *connect.Request[agentv1.RunRequest]) (*connect.Response[agentv1.RunResponse], error) {
	tenant, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	run, err := s.startRun(ctx, tenant, req.Msg.GetAgent(), req.Msg.GetInput(), req.Msg.GetAttachments(), req.Msg.GetIdempotencyKey(), nil)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.RunResponse{Run: run}), nil
}

// RunStream implements agentv1connect.AgentServiceHandler. Events follow the run: started, memory hits or a
// warning, then per step text deltas, usage, tool calls and results, and last completed or failed.
func (s *Server) RunStream(ctx context.Context, req *connect.Request[agentv1.RunStreamRequest], stream *connect.ServerStream[agentv1.RunStreamResponse]) error {
	tenant, err := principal.Tenant(ctx)
	if err != nil {
		return s.connectError(ctx, err)
	}
	_, err = s.startRun(ctx, tenant, req.Msg.GetAgent(), req.Msg.GetInput(), req.Msg.GetAttachments(), req.Msg.GetIdempotencyKey(), stream.Send)
	return s.connectError(ctx, err)
}

// GetRun implements agentv1connect.AgentServiceHandler.
func (s *Server) GetRun(ctx context.Context, req *connect.Request[agentv1.GetRunRequest]) (*connect.Response[agentv1.GetRunResponse], error) {
	tenant, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	run, err := s.store.GetRun(ctx, tenant, req.Msg.GetId())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.GetRunResponse{Run: run}), nil
}

// ListRuns implements agentv1connect.AgentServiceHandler.
func (s *Server) ListRuns(ctx context.Context, req *connect.Request[agentv1.ListRunsRequest]) (*connect.Response[agentv1.ListRunsResponse], error) {
	tenant, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	f := RunFilter{Agent: req.Msg.GetAgent()}
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
	tenant, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
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
	run, err := s.store.GetRun(ctx, tenant, id)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	if run.GetState() != agentv1.RunState_RUN_STATE_RUNNING {
		return nil, s.connectError(ctx, finishedError(run))
	}
	run.State, run.Error, run.EndTime = agentv1.RunState_RUN_STATE_CANCELLED, "cancelled", timestamppb.Now()
	if err := s.store.FinishRun(ctx, tenant, run); err != nil {
		if errors.Is(err, ErrConflict) {
			if run, err2 := s.store.GetRun(ctx, tenant, id); err2 == nil {
				err = finishedError(run)
			}
		}
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.CancelRunResponse{Run: run}), nil
}

func finishedError(run *agentv1.Run) error {
	return preconditionError(fmt.Sprintf("run %s already finished: %s", run.GetId(),
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
func (s *Server) startRun(ctx context.Context, tenant, agentName, input string, atts []*agentv1.Attachment, key string, emit emitFunc) (*agentv1.Run, error) {
	if key != "" {
		prev, err := s.store.GetRunByIdempotencyKey(ctx, tenant, key)
		if err == nil {
			return s.replay(ctx, tenant, prev, agentName, input, emit)
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	a, err := s.store.GetAgent(ctx, tenant, agentName, 0)
	if err != nil {
		return nil, err
	}
	if err := checkAttachments(a.GetModel().GetProvider(), atts); err != nil {
		return nil, err
	}
	run, err := s.execute(ctx, tenant, a, input, modelAttachments(atts), key, []string{a.GetName()}, emit)
	if run == nil && key != "" && errors.Is(err, ErrAlreadyExists) {
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
		return nil, &FieldError{Field: "idempotency_key", Reason: "already used for a different agent or input"}
	}
	if ar := s.active(tenant, run.GetId()); ar != nil {
		select {
		case <-ar.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var err error
		if run, err = s.store.GetRun(ctx, tenant, run.GetId()); err != nil {
			return nil, err
		}
	}
	if emit != nil {
		_ = emit(&agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Started{
			Started: &agentv1.RunStarted{AgentVersion: run.GetAgentVersion()}}})
		_ = emit(finalEvent(run))
	}
	return run, nil
}

func finalEvent(run *agentv1.Run) *agentv1.RunStreamResponse {
	if run.GetState() == agentv1.RunState_RUN_STATE_SUCCEEDED {
		return &agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Completed{Completed: run}}
	}
	return &agentv1.RunStreamResponse{RunId: run.GetId(), Event: &agentv1.RunStreamResponse_Failed{Failed: run}}
}

// execute records a new run of a and drives it to its end; atts go with input to the model and are not recorded.
// It returns the finished run, or nil when the run could not be recorded; and the error that failed it, or nil
// when it succeeded or exhausted a budget.
func (s *Server) execute(ctx context.Context, tenant string, a *agentv1.Agent, input string, atts []model.Attachment, key string, chain []string, emit emitFunc) (*agentv1.Run, error) {
	provider := a.GetModel().GetProvider()
	if provider == agentv1.Provider_PROVIDER_UNSPECIFIED {
		provider = agentv1.Provider_PROVIDER_SIM
	}
	modelName := a.GetModel().GetName()
	if provider == agentv1.Provider_PROVIDER_SIM {
		modelName = "sim"
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("run id: %w", err)
	}
	run := &agentv1.Run{Id: id.String(), Agent: a.GetName(), AgentVersion: a.GetVersion(),
		State: agentv1.RunState_RUN_STATE_RUNNING, Input: input, Provider: provider, Model: modelName,
		Usage: &agentv1.Usage{}, CreateTime: timestamppb.Now(), IdempotencyKey: key}
	if err := s.store.CreateRun(ctx, tenant, run); err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	maxDur := a.GetBudgets().GetMaxDuration().AsDuration()
	if maxDur <= 0 {
		maxDur = defaultMaxDuration
	}
	runCtx, cancelT := context.WithTimeoutCause(runCtx, maxDur, &budgetError{fmt.Sprintf("time budget of %v exhausted", maxDur)})
	defer cancelT()

	ar := &activeRun{cancel: cancel, done: make(chan struct{})}
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

	env := runEnv{tenant: tenant, agent: a, runID: run.GetId(), chain: chain, attachments: atts, emit: emit}
	loopErr := s.loop(runCtx, env, run, send)

	var budget *budgetError
	switch {
	case loopErr == nil:
		run.State = agentv1.RunState_RUN_STATE_SUCCEEDED
	case errors.As(loopErr, &budget):
		run.State, run.Error, loopErr = agentv1.RunState_RUN_STATE_FAILED, budget.msg, nil
	case errors.Is(loopErr, context.Canceled), errors.Is(loopErr, context.DeadlineExceeded):
		run.State, run.Error = agentv1.RunState_RUN_STATE_CANCELLED, "cancelled"
		if errors.Is(loopErr, context.DeadlineExceeded) {
			run.Error = "cancelled: the caller's deadline passed"
		}
	case errors.Is(loopErr, model.ErrUnavailable), errors.Is(loopErr, model.ErrNotConfigured), errors.Is(loopErr, ErrFailedPrecondition):
		run.State, run.Error = agentv1.RunState_RUN_STATE_FAILED, loopErr.Error()
	default:
		s.logger.ErrorContext(ctx, "agent: run failed", "run", run.GetId(), "err", loopErr)
		run.State, run.Error, loopErr = agentv1.RunState_RUN_STATE_FAILED, "internal error", errLoggedInternal
	}
	run.EndTime = timestamppb.Now()

	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer fcancel()
	if err := s.store.FinishRun(fctx, tenant, run); err != nil {
		if !errors.Is(err, ErrConflict) {
			return run, err
		}
		// CancelRun from another replica finished it first; its state stands.
		if stored, err := s.store.GetRun(fctx, tenant, run.GetId()); err == nil {
			run = stored
		}
	}
	send(finalEvent(run))
	return run, loopErr
}

// loop is the run loop: memory retrieval, then model calls and tool calls until the model answers without
// calling tools or a budget runs out.
func (s *Server) loop(ctx context.Context, env runEnv, run *agentv1.Run, send func(*agentv1.RunStreamResponse)) error {
	a := env.agent
	system := a.GetInstructions()
	if a.GetMemory().GetNamespace() != "" {
		system += s.retrieve(ctx, a, run, send)
	}
	m, err := s.modelFor(ctx, env.tenant, a, run.GetInput())
	if err != nil {
		return err
	}
	var temperature *float32
	if a.GetModel() != nil { // an agent created without a model runs on the sim default
		temperature = a.GetModel().Temperature
	}
	req := model.Request{
		Model: a.GetModel().GetName(), System: system, Tools: toolSpecs(a),
		Temperature: temperature, MaxOutputTokens: a.GetModel().GetMaxOutputTokens(),
		Messages: []model.Message{{Role: model.RoleUser, Text: run.GetInput(), Attachments: env.attachments}},
	}
	maxSteps := int(a.GetBudgets().GetMaxSteps())
	if maxSteps <= 0 {
		maxSteps = defaultMaxSteps
	}
	maxTokens := a.GetBudgets().GetMaxTokens()
	seen := map[string]bool{}
	for step := 0; ; step++ {
		if step >= maxSteps {
			return &budgetError{fmt.Sprintf("step budget exhausted: %d model calls without a final answer", maxSteps)}
		}
		st := &agentv1.Step{Index: int32(step), Usage: &agentv1.Usage{}}
		run.Steps = append(run.Steps, st)
		var (
			text  strings.Builder
			calls []model.ToolCall
		)
		start := time.Now()
		for c, err := range m.Stream(ctx, req) {
			if err != nil {
				st.Text, st.Latency = text.String(), durationpb.New(time.Since(start))
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
				st.Usage = &agentv1.Usage{InputTokens: c.Usage.InputTokens, OutputTokens: c.Usage.OutputTokens}
			}
		}
		st.Text, st.Latency = text.String(), durationpb.New(time.Since(start))
		run.Usage.InputTokens += st.Usage.GetInputTokens()
		run.Usage.OutputTokens += st.Usage.GetOutputTokens()
		send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Usage{Usage: st.Usage}})
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if total := run.Usage.InputTokens + run.Usage.OutputTokens; maxTokens > 0 && total > maxTokens {
			return &budgetError{fmt.Sprintf("token budget exhausted: %d tokens used, budget %d", total, maxTokens)}
		}
		if len(calls) == 0 {
			run.Output = st.Text
			return nil
		}
		req.Messages = append(req.Messages, model.Message{Role: model.RoleAssistant, Text: st.Text, ToolCalls: calls})
		for _, c := range calls {
			pc := &agentv1.ToolCall{Id: c.ID, Name: c.Name}
			pc.Arguments, _ = structpb.NewStruct(c.Args) // arguments that are not JSON stay unset in the record
			if protolimit.CheckStruct(pc.Arguments, "arguments", protolimit.MaxDepth) != nil {
				pc.Arguments = nil // nested too deeply to be read back once stored; the tool refuses the call anyway
			}
			st.ToolCalls = append(st.ToolCalls, pc)
			send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_ToolCall{ToolCall: pc}})
			res := s.callTool(ctx, env, c)
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			st.ToolResults = append(st.ToolResults, res)
			send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_ToolResult{ToolResult: res}})
			req.Messages = append(req.Messages, model.Message{Role: model.RoleTool, ToolCallID: c.ID, ToolName: c.Name, Text: resultJSON(res)})
		}
	}
}

// retrieve searches the agent's memory for the run input and returns the context to add to the system
// instructions. On failure or timeout the run goes on without memory, with a warning.
func (s *Server) retrieve(ctx context.Context, a *agentv1.Agent, run *agentv1.Run, send func(*agentv1.RunStreamResponse)) string {
	warn := func(msg string) {
		run.Warnings = append(run.Warnings, msg)
		send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_Warning{Warning: &agentv1.Warning{Message: msg}}})
	}
	if s.memory == nil {
		warn("memory is not configured on this server; continuing without memory")
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

// modelFor returns the model of a, with tenant's own provider key when it has one. The sim is made per run and
// seeded by the input, so a run's behaviour follows from its agent and input.
func (s *Server) modelFor(ctx context.Context, tenant string, a *agentv1.Agent, input string) (model.Model, error) {
	switch a.GetModel().GetProvider() {
	case agentv1.Provider_PROVIDER_UNSPECIFIED, agentv1.Provider_PROVIDER_SIM:
		return model.NewSim(a.GetModel().GetSim(), model.SeedFrom(input)), nil
	case agentv1.Provider_PROVIDER_GEMINI:
		key, own, err := s.providerKey(ctx, tenant, secrets.ProviderGemini, s.mcfg.GeminiAPIKey)
		if err != nil || !own {
			return s.gemini, err
		}
		cfg := s.mcfg
		cfg.GeminiAPIKey = key
		return model.NewGemini(cfg), nil
	case agentv1.Provider_PROVIDER_OPENAI:
		key, own, err := s.providerKey(ctx, tenant, secrets.ProviderOpenAI, s.mcfg.OpenAIAPIKey)
		if err != nil || !own {
			return s.openai, err
		}
		cfg := s.mcfg
		cfg.OpenAIAPIKey = key
		return model.NewOpenAI(cfg), nil
	}
	return nil, preconditionError(fmt.Sprintf("unknown model provider %v", a.GetModel().GetProvider()))
}

// checkAttachments refuses attachments provider cannot take: OpenAI-compatible endpoints take images and only
// the audio types model.OpenAIAudioFormat knows. The sim and Gemini take every type the contract allows.
func checkAttachments(provider agentv1.Provider, atts []*agentv1.Attachment) error {
	if provider != agentv1.Provider_PROVIDER_OPENAI {
		return nil
	}
	for i, a := range atts {
		mt := a.GetMimeType()
		if _, ok := model.OpenAIAudioFormat(mt); ok || strings.HasPrefix(mt, "image/") {
			continue
		}
		return &FieldError{Field: fmt.Sprintf("attachments[%d].mime_type", i),
			Reason: fmt.Sprintf("%q is not supported by OpenAI-compatible models; send audio as audio/wav or audio/mpeg", mt)}
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
	case errors.Is(err, ErrInvalidArgument), errors.Is(err, ErrNotFound), errors.Is(err, ErrFailedPrecondition),
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
