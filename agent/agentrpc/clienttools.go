package agentrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/model"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/protolimit"
)

// Client tools (agentv1.ClientTool): tools the caller executes. A model turn that calls one ends in park, which
// stores the run as RUN_STATE_WAITING_FOR_TOOLS with a waitState (the conversation so far, the pending calls,
// what chaos drew) and returns: nothing of the run stays in memory. SubmitToolResult records results in the
// waitState; the submission that completes it wins Store.ResumeRun (one winner among concurrent callers, on any
// replica) and drives the run on from the stored state. Deadlines are enforced by Maintain (FailExpiredWaits)
// and on every read of a waiting run.

const (
	// DefaultClientToolTimeout is how long a run waits for a client tool's result when the tool sets no timeout.
	DefaultClientToolTimeout = 10 * time.Minute
	// MaxClientToolTimeout is the longest wait a client tool may ask for (the contract's limit).
	MaxClientToolTimeout = 24 * time.Hour
	// maxClientResultBytes bounds one submitted result, in bytes of JSON.
	maxClientResultBytes = 256 << 10
	// submitRetries bounds how often SubmitToolResult starts over when a concurrent submission changed the run.
	submitRetries = 8
	// WaitExpiredReason is the error of a run failed because its wait_deadline passed before every pending
	// client tool call was answered.
	WaitExpiredReason = "wait deadline exceeded: no result was submitted for every pending client tool call before the run's wait_deadline"
)

// waitError ends a model turn that called client tools: the loop's state at that point, for park.
type waitError struct {
	req   model.Request
	step  int
	seen  map[string]bool
	calls []model.ToolCall
}

func (*waitError) Error() string { return "run waits for client tool results" }

// waitState is what a waiting run needs to resume, stored as JSON in Wait.State.
type waitState struct {
	System   string                  `json:"system"`
	Messages []model.Message         `json:"messages"` // the conversation so far, attachments included
	Step     int                     `json:"step"`     // index of the step whose client calls wait
	Seen     []string                `json:"seen"`     // call ids used so far
	Calls    []model.ToolCall        `json:"calls"`    // the client calls waiting, in call order
	Results  map[string]clientAnswer `json:"results"`  // by call id
	// ClientTools are every client tool of the run's agent, the run request's own among them (protojson).
	ClientTools []json.RawMessage `json:"client_tools,omitempty"`
	Attempt     int32             `json:"attempt"`
	// Chaos (protojson agentv1.Chaos) with its seed and how many model and tool calls it drew for.
	Chaos      json.RawMessage `json:"chaos,omitempty"`
	ChaosSeed  uint64          `json:"chaos_seed,omitempty"`
	ChaosCalls uint64          `json:"chaos_calls,omitempty"`
	ChaosTools uint64          `json:"chaos_tools,omitempty"`
	// Elapsed is the time the run executed before (the time budget counts execution, not waiting).
	Elapsed time.Duration `json:"elapsed"`
}

// clientAnswer is a submitted result of one call.
type clientAnswer struct {
	Result map[string]any `json:"result,omitempty"`
	Error  string         `json:"error,omitempty"`
}

func (a clientAnswer) equal(b clientAnswer) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// elapsed is the time the run executed before it resumed; 0 for a run that did not wait.
func (w *waitState) elapsed() time.Duration {
	if w == nil {
		return 0
	}
	return w.Elapsed
}

// unanswered returns the calls without a result, in call order.
func (w *waitState) unanswered() []model.ToolCall {
	var out []model.ToolCall
	for _, c := range w.Calls {
		if _, ok := w.Results[c.ID]; !ok {
			out = append(out, c)
		}
	}
	return out
}

// clientTool returns a's client tool called name, or nil.
func clientTool(a *agentv1.Agent, name string) *agentv1.ClientTool {
	for _, t := range a.GetTools() {
		if c := t.GetClient(); c != nil && c.GetName() == name {
			return c
		}
	}
	return nil
}

func clientTimeout(c *agentv1.ClientTool) time.Duration {
	if d := c.GetTimeout().AsDuration(); d > 0 {
		return min(d, MaxClientToolTimeout)
	}
	return DefaultClientToolTimeout
}

// withClientTools returns a with the run request's client tools added (a is not modified), and refuses a workflow
// step's run of an agent with client tools: no caller could answer it.
func withClientTools(a *agentv1.Agent, opts runOpts) (*agentv1.Agent, error) {
	if len(opts.clientTools) > 0 {
		names := map[string]bool{}
		for _, t := range a.GetTools() {
			names[agent.ToolName(t)] = true
		}
		a = proto.CloneOf(a)
		for i, c := range opts.clientTools {
			path := fmt.Sprintf("client_tools[%d]", i)
			if names[c.GetName()] {
				return nil, &agent.FieldError{Field: path + ".name", Reason: fmt.Sprintf("duplicate tool %q", c.GetName())}
			}
			if err := agent.CheckClientTool(c, path); err != nil {
				return nil, err
			}
			names[c.GetName()] = true
			a.Tools = append(a.Tools, &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: c}})
		}
	}
	if opts.blueprint != "" && slices.ContainsFunc(a.GetTools(), func(t *agentv1.Tool) bool { return t.GetClient() != nil }) {
		return nil, agent.PreconditionError(fmt.Sprintf("agent %q has client tools, which a workflow step cannot answer: run it directly (Run or RunStream) or remove them", a.GetName()))
	}
	return a, nil
}

// waitsFor reports whether the run waits for the caller to execute call: a client tool called with valid
// arguments by a top-level run. Other calls of client tools go to callTool, which tells the model why not.
func (s *Server) waitsFor(env runEnv, call model.ToolCall) bool {
	c := clientTool(env.agent, call.Name)
	if c == nil || len(env.chain) != 1 {
		return false
	}
	sch, err := s.schemas.Compile(toolSchema(&agentv1.Tool{Kind: &agentv1.Tool_Client{Client: c}}))
	return agent.ValidateCompiled(sch, err, map[string]any(call.Args)) == nil
}

// park stores run as waiting for the client calls of w and ends this execution of it.
func (s *Server) park(ctx context.Context, tenant string, run *agentv1.Run, env runEnv, w *waitError, send func(*agentv1.RunStreamResponse)) (*agentv1.Run, error) {
	timeout := MaxClientToolTimeout
	st := waitState{System: w.req.System, Messages: w.req.Messages, Step: w.step, Calls: w.calls,
		Results: map[string]clientAnswer{}, Attempt: env.attempt, Elapsed: env.resume.elapsed() + time.Since(env.started)}
	for id := range w.seen {
		st.Seen = append(st.Seen, id)
	}
	slices.Sort(st.Seen)
	for _, c := range w.calls {
		timeout = min(timeout, clientTimeout(clientTool(env.agent, c.Name)))
	}
	for _, t := range env.agent.GetTools() {
		if c := t.GetClient(); c != nil {
			b, err := protojson.Marshal(c)
			if err != nil {
				return run, fmt.Errorf("encode client tool: %w", err)
			}
			st.ClientTools = append(st.ClientTools, b)
		}
	}
	if cm := env.chaos; cm != nil {
		b, err := protojson.Marshal(cm.c)
		if err != nil {
			return run, fmt.Errorf("encode chaos: %w", err)
		}
		cm.mu.Lock()
		st.Chaos, st.ChaosSeed, st.ChaosCalls, st.ChaosTools = b, cm.seed, cm.calls, cm.tools
		cm.mu.Unlock()
	}
	state, err := json.Marshal(st)
	if err != nil {
		return run, fmt.Errorf("encode wait state: %w", err)
	}
	deadline := time.Now().Add(timeout)
	run.State, run.WaitDeadline = agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS, timestamppb.New(deadline)
	run.PendingToolCalls = pendingCalls(run, st.Calls)
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if err := env.record.wait(fctx); err != nil { // a new run's record may still be on its way (see record.go)
		return nil, err
	}
	if err := s.store.WaitRun(fctx, tenant, run, agent.Wait{Deadline: deadline, State: state}); err != nil {
		if !errors.Is(err, agent.ErrConflict) {
			return run, err
		}
		// CancelRun from another replica finished it first; its state stands.
		if run, err = s.store.GetRun(fctx, tenant, run.GetId()); err != nil {
			return nil, err
		}
	}
	send(finalEvent(run))
	return run, nil
}

// pendingCalls returns the recorded calls of run's last step that are among calls, in calls' order.
func pendingCalls(run *agentv1.Run, calls []model.ToolCall) []*agentv1.ToolCall {
	var recorded []*agentv1.ToolCall
	if n := len(run.GetSteps()); n > 0 {
		recorded = run.GetSteps()[n-1].GetToolCalls()
	}
	out := make([]*agentv1.ToolCall, 0, len(calls))
	for _, c := range calls {
		if i := slices.IndexFunc(recorded, func(r *agentv1.ToolCall) bool { return r.GetId() == c.ID }); i >= 0 {
			out = append(out, recorded[i])
		}
	}
	return out
}

// resumeLoop prepares the loop of a resumed run: the stored conversation, the submitted results added to the
// waiting step (and streamed), and the step to go on from. A run that does not resume starts at step 0.
func (s *Server) resumeLoop(env runEnv, run *agentv1.Run, req *model.Request, send func(*agentv1.RunStreamResponse)) (int, map[string]bool) {
	seen := map[string]bool{}
	w := env.resume
	if w == nil {
		return 0, seen
	}
	for _, id := range w.Seen {
		seen[id] = true
	}
	req.System, req.Messages = w.System, w.Messages
	var st *agentv1.Step
	if w.Step < len(run.GetSteps()) {
		st = run.GetSteps()[w.Step]
	}
	for _, c := range w.Calls {
		res := w.Results[c.ID].toolResult(c)
		if st != nil {
			st.ToolResults = append(st.ToolResults, res)
		}
		send(&agentv1.RunStreamResponse{Event: &agentv1.RunStreamResponse_ToolResult{ToolResult: res}})
		req.Messages = append(req.Messages, model.Message{Role: model.RoleTool, ToolCallID: c.ID, ToolName: c.Name, Text: resultJSON(res)})
	}
	return w.Step + 1, seen
}

func (a clientAnswer) toolResult(c model.ToolCall) *agentv1.ToolResult {
	res := &agentv1.ToolResult{CallId: c.ID, Name: c.Name, Error: a.Error}
	if a.Error == "" {
		var err error
		if res.Result, err = structpb.NewStruct(a.Result); err != nil {
			res.Error = "tool result is not JSON: " + err.Error()
		}
	}
	return res
}

// answer is the clientAnswer of a submitted result.
func answer(r *agentv1.ClientToolResult) clientAnswer {
	if r.GetError() != "" {
		return clientAnswer{Error: r.GetError()}
	}
	m := r.GetResult().AsMap()
	if m == nil {
		m = map[string]any{}
	}
	return clientAnswer{Result: m}
}

// checkResults checks what protovalidate cannot: each call answered once, result or error, size and depth.
func checkResults(results []*agentv1.ClientToolResult) error {
	seen := map[string]bool{}
	for i, r := range results {
		path := fmt.Sprintf("results[%d]", i)
		if seen[r.GetCallId()] {
			return &agent.FieldError{Field: path + ".call_id", Reason: fmt.Sprintf("call %q is answered twice", agent.TruncatePath(r.GetCallId()))}
		}
		seen[r.GetCallId()] = true
		if r.GetError() != "" && r.GetResult() != nil {
			return &agent.FieldError{Field: path, Reason: "set result or error, not both"}
		}
		if err := protolimit.CheckStruct(r.GetResult(), path+".result", protolimit.MaxDepth); err != nil {
			return &agent.FieldError{Field: path + ".result", Reason: fmt.Sprintf("nested deeper than %d levels", protolimit.MaxDepth)}
		}
		if b, err := json.Marshal(answer(r).Result); err != nil || len(b) > maxClientResultBytes {
			return &agent.FieldError{Field: path + ".result", Reason: fmt.Sprintf("larger than %d bytes of JSON", maxClientResultBytes)}
		}
	}
	return nil
}

// SubmitToolResult implements agentv1connect.AgentServiceHandler.
func (s *Server) SubmitToolResult(ctx context.Context, req *connect.Request[agentv1.SubmitToolResultRequest]) (*connect.Response[agentv1.SubmitToolResultResponse], error) {
	tenant := principal.TenantOf(ctx)
	run, err := s.submit(ctx, tenant, req.Msg.GetRunId(), req.Msg.GetResults())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.SubmitToolResultResponse{Run: run}), nil
}

// submit records results for the waiting run id and, once every pending call is answered, resumes it here.
func (s *Server) submit(ctx context.Context, tenant, id string, results []*agentv1.ClientToolResult) (*agentv1.Run, error) {
	if err := checkResults(results); err != nil {
		return nil, err
	}
	for range submitRetries {
		run, err := s.getRun(ctx, tenant, id)
		if err != nil {
			return nil, err
		}
		if run.GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS {
			return s.answered(ctx, tenant, run, results)
		}
		w, err := s.store.GetWait(ctx, tenant, id)
		if errors.Is(err, agent.ErrNotFound) {
			continue // it stopped waiting meanwhile
		}
		if err != nil {
			return nil, err
		}
		var st waitState
		if err := json.Unmarshal(w.State, &st); err != nil {
			return nil, fmt.Errorf("decode the wait state of run %s: %w", id, err)
		}
		if st.Results == nil {
			st.Results = map[string]clientAnswer{}
		}
		changed := false
		for i, r := range results {
			if !slices.ContainsFunc(st.Calls, func(c model.ToolCall) bool { return c.ID == r.GetCallId() }) {
				var ids []string
				for _, c := range st.unanswered() {
					ids = append(ids, c.ID)
				}
				return nil, &agent.FieldError{Field: fmt.Sprintf("results[%d].call_id", i),
					Reason: fmt.Sprintf("run %s is not waiting for call %q; pending calls: [%s]", id, agent.TruncatePath(r.GetCallId()), strings.Join(ids, ", "))}
			}
			ans := answer(r)
			if prev, ok := st.Results[r.GetCallId()]; ok {
				if !prev.equal(ans) {
					return nil, agent.PreconditionError(fmt.Sprintf("call %q of run %s was already answered with a different result", r.GetCallId(), id))
				}
				continue
			}
			st.Results[r.GetCallId()] = ans
			changed = true
		}
		version := w.Version
		if changed {
			run.PendingToolCalls = pendingCalls(run, st.unanswered())
			b, err := json.Marshal(st)
			if err != nil {
				return nil, fmt.Errorf("encode wait state: %w", err)
			}
			if err := s.store.UpdateWait(ctx, tenant, run, agent.Wait{Version: w.Version, State: b}); errors.Is(err, agent.ErrConflict) {
				continue
			} else if err != nil {
				return nil, err
			}
			version++
		}
		if len(st.unanswered()) > 0 {
			return run, nil
		}
		if err := s.store.ResumeRun(ctx, tenant, id, version, s.lease()); errors.Is(err, agent.ErrConflict) {
			continue // another submission resumed it: answered waits for it
		} else if err != nil {
			return nil, err
		}
		run, err = s.resume(ctx, tenant, run, &st)
		if err != nil && run != nil {
			return run, fmt.Errorf("run %s: %w", run.GetId(), err)
		}
		return run, err
	}
	return nil, fmt.Errorf("run %s changed too often while results were submitted; retry: %w", id, agent.ErrConflict)
}

// answered answers a submission to a run that no longer waits: when every result was accepted before (the same
// value for the same call), with the run as it is once it stops running (the model never runs twice for one
// result); otherwise FailedPrecondition.
func (s *Server) answered(ctx context.Context, tenant string, run *agentv1.Run, results []*agentv1.ClientToolResult) (*agentv1.Run, error) {
	if run.GetState() == agentv1.RunState_RUN_STATE_RUNNING {
		var err error
		if run, err = s.waitStored(ctx, tenant, run); err != nil {
			return nil, err
		}
	}
	for _, r := range results {
		found := false
		for _, st := range run.GetSteps() {
			for _, tr := range st.GetToolResults() {
				if tr.GetCallId() == r.GetCallId() {
					got := clientAnswer{Error: tr.GetError(), Result: tr.GetResult().AsMap()}
					if got.Error != "" {
						got.Result = nil
					} else if got.Result == nil {
						got.Result = map[string]any{}
					}
					found = got.equal(answer(r))
				}
			}
		}
		if !found {
			state := strings.TrimPrefix(run.GetState().String(), "RUN_STATE_")
			if run.GetError() != "" {
				state += ": " + run.GetError()
			}
			return nil, agent.PreconditionError(fmt.Sprintf("run %s is not waiting for tool results (%s)", run.GetId(), state))
		}
	}
	return run, nil
}

// resume drives run, just resumed in the store (RUNNING, leased here), on from st.
func (s *Server) resume(ctx context.Context, tenant string, run *agentv1.Run, st *waitState) (*agentv1.Run, error) {
	run.State, run.PendingToolCalls, run.WaitDeadline = agentv1.RunState_RUN_STATE_RUNNING, nil, nil
	a, err := s.store.GetAgent(ctx, tenant, run.GetAgent(), run.GetAgentVersion())
	if errors.Is(err, agent.ErrNotFound) {
		run.State, run.EndTime = agentv1.RunState_RUN_STATE_FAILED, timestamppb.Now()
		run.Error = fmt.Sprintf("agent %q version %d was deleted while the run waited for client tools", run.GetAgent(), run.GetAgentVersion())
		return run, s.store.FinishRun(ctx, tenant, run)
	}
	if err != nil {
		return nil, err
	}
	for _, b := range st.ClientTools {
		c := &agentv1.ClientTool{}
		if err := protojson.Unmarshal(b, c); err != nil {
			return nil, fmt.Errorf("decode client tool: %w", err)
		}
		if clientTool(a, c.GetName()) == nil {
			a.Tools = append(a.Tools, &agentv1.Tool{Kind: &agentv1.Tool_Client{Client: c}})
		}
	}
	var chaos *chaosModel
	if len(st.Chaos) > 0 {
		c := &agentv1.Chaos{}
		if err := protojson.Unmarshal(st.Chaos, c); err != nil {
			return nil, fmt.Errorf("decode chaos: %w", err)
		}
		chaos = &chaosModel{c: c, seed: st.ChaosSeed, attempt: st.Attempt, calls: st.ChaosCalls, tools: st.ChaosTools}
	}
	env := runEnv{tenant: tenant, agent: a, runID: run.GetId(), chain: []string{a.GetName()}, chaos: chaos,
		attempt: st.Attempt, meter: s.meterFor(run.GetProvider(), run.GetModel()), resume: st}
	return s.drive(ctx, tenant, a, run, run.GetIdempotencyKey(), nil, env)
}

// getRun reads a run, failing it first when it waits past its wait deadline (the check on read; Maintain
// sweeps the rest).
func (s *Server) getRun(ctx context.Context, tenant, id string) (*agentv1.Run, error) {
	run, err := s.store.GetRun(ctx, tenant, id)
	if err != nil || run.GetState() != agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS || run.GetWaitDeadline().AsTime().After(time.Now()) {
		return run, err
	}
	if _, err := s.ExpireWaits(ctx); err != nil {
		return nil, err
	}
	return s.store.GetRun(ctx, tenant, id)
}

// ExpireWaits fails, with WaitExpiredReason, every run waiting for client tools past its wait deadline, and
// returns how many there were. Maintain calls it; it is exported for tests.
func (s *Server) ExpireWaits(ctx context.Context) (int64, error) {
	n, err := s.store.FailExpiredWaits(ctx, time.Now(), WaitExpiredReason)
	if n > 0 {
		s.logger.InfoContext(ctx, "agent: runs past their client tool wait deadline marked failed", "runs", n)
	}
	return n, err
}

// cancelWaiting cancels a run waiting for client tools.
func (s *Server) cancelWaiting(ctx context.Context, tenant string, run *agentv1.Run) (*agentv1.Run, error) {
	run.State, run.Error, run.EndTime = agentv1.RunState_RUN_STATE_CANCELLED, "cancelled", timestamppb.Now()
	run.PendingToolCalls, run.WaitDeadline = nil, nil
	if err := s.store.FinishWait(ctx, tenant, run); err != nil {
		if errors.Is(err, agent.ErrConflict) {
			return nil, fmt.Errorf("run %s resumed while it was being cancelled; cancel it again: %w", run.GetId(), agent.ErrConflict)
		}
		return nil, err
	}
	return run, nil
}
