package engine

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/orchestrator"
)

// agentVersion is the agent version an agent or map step runs (0: unpinned, the latest; other kinds: 0).
func agentVersion(d *orchestratorv1.Step) int64 {
	switch k := d.GetKind().(type) {
	case *orchestratorv1.Step_Agent:
		return k.Agent.GetAgentVersion()
	case *orchestratorv1.Step_Map:
		return k.Map.GetAgentVersion()
	}
	return 0
}

// pinAgents returns bp with every agent and map step pinned to an agent version: the one it names, or the
// agent's latest version now (one GetAgent per agent). bp itself is not changed. The pinned copy is the run's
// stored definition, so the versions are recorded with the run in the transaction that creates it and every
// owner runs them, after a crash or a takeover too. ErrFailedPrecondition names the step whose agent or version
// does not exist; ErrUnavailable when the agent service does not answer.
func (e *Engine) pinAgents(ctx context.Context, tenant, runID string, bp *orchestratorv1.Blueprint) (*orchestratorv1.Blueprint, error) {
	var out *orchestratorv1.Blueprint
	latest := map[string]int64{}
	checked := map[string]bool{} // "agent\x00version" of explicit versions found
	ctx = principal.NewContext(ctx, principal.Principal{Tenant: tenant, Subject: "workflow:" + runID, Roles: []string{"writer"}})
	lookup := func(stepID, name string, version int64) (int64, error) {
		resp, err := e.agents.GetAgent(ctx, &agentv1.GetAgentRequest{Name: name, Version: version})
		what := fmt.Sprintf("agent %q", name)
		if version != 0 {
			what = fmt.Sprintf("agent %q version %d", name, version)
		}
		switch status.Code(err) {
		case codes.OK:
			return resp.GetAgent().GetVersion(), nil
		case codes.NotFound:
			return 0, fmt.Errorf("step %q: %s does not exist: %w", stepID, what, orchestrator.ErrFailedPrecondition)
		case codes.Canceled, codes.DeadlineExceeded:
			return 0, fmt.Errorf("look up %s: %w", what, err)
		}
		return 0, fmt.Errorf("step %q: look up %s: %w: %s", stepID, what, orchestrator.ErrUnavailable, status.Convert(err).Message())
	}
	for i, d := range bp.GetSteps() {
		var name string
		var version int64
		switch k := d.GetKind().(type) {
		case *orchestratorv1.Step_Agent:
			name, version = k.Agent.GetAgent(), k.Agent.GetAgentVersion()
		case *orchestratorv1.Step_Map:
			name, version = k.Map.GetAgent(), k.Map.GetAgentVersion()
		default:
			continue
		}
		if version != 0 {
			// Named in the blueprint: it must exist (checked once per agent and version).
			if key := fmt.Sprint(name, "\x00", version); !checked[key] {
				if _, err := lookup(d.GetId(), name, version); err != nil {
					return nil, err
				}
				checked[key] = true
			}
			continue
		}
		v, ok := latest[name]
		if !ok {
			var err error
			if v, err = lookup(d.GetId(), name, 0); err != nil {
				return nil, err
			}
			latest[name] = v
		}
		if out == nil {
			out = proto.CloneOf(bp)
		}
		switch k := out.GetSteps()[i].GetKind().(type) {
		case *orchestratorv1.Step_Agent:
			k.Agent.AgentVersion = v
		case *orchestratorv1.Step_Map:
			k.Map.AgentVersion = v
		}
	}
	if out == nil {
		return bp, nil
	}
	return out, nil
}

// agentCall is one agent run a step makes: the agent and its version (0: the latest), its input, the
// idempotency key, the blueprint it is for, the step's chaos with the step's attempt number (zero values: none),
// and where its text goes live as the model produces it (nil: nowhere).
type agentCall struct {
	agent, input, key, blueprint string
	version                      int64
	chaos                        *agentv1.Chaos
	attempt                      int32
	text                         func(string)
}

// callAgent runs c through the agent service's RunStream and returns its output and what it used and cost:
// also when it failed, from the run in the error's details when the agent service sends one (a budget), or
// from the run of its failed event. The run's own text deltas go to c.text as they arrive (a delegated run's
// events, forwarded on the same stream, do not).
func (e *Engine) callAgent(ctx context.Context, c agentCall) (string, *orchestratorv1.Usage, error) {
	agent := c.agent
	req := &agentv1.RunStreamRequest{Agent: agent, AgentVersion: c.version, Input: c.input, IdempotencyKey: c.key, Blueprint: c.blueprint, Chaos: c.chaos}
	if c.chaos != nil {
		req.Attempt = c.attempt
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream when it is left early
	stream, err := e.agents.RunStream(ctx, req)
	if err != nil {
		return "", usageInError(err), rpcError("agent "+agent, err)
	}
	var (
		own string // the streamed run's id, from its first event
		run *agentv1.Run
	)
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			usage := usageInError(err)
			if usage == nil && run != nil {
				usage = agentUsage(run.GetUsage())
			}
			return "", usage, rpcError("agent "+agent, err)
		}
		if own == "" {
			own = ev.GetRunId()
		}
		if ev.GetRunId() != own {
			continue // a delegated run's event
		}
		switch k := ev.GetEvent().(type) {
		case *agentv1.RunStreamResponse_TextDelta:
			if c.text != nil && k.TextDelta.GetText() != "" {
				c.text(k.TextDelta.GetText())
			}
		case *agentv1.RunStreamResponse_Completed:
			run = k.Completed
		case *agentv1.RunStreamResponse_Failed:
			run = k.Failed
		}
	}
	if run == nil {
		// The stream ended without the run's end: the same key gets the agent's real result.
		return "", nil, fmt.Errorf("agent %s: the stream ended before the run did: %w", agent, errUnfinished)
	}
	switch run.GetState() {
	case agentv1.RunState_RUN_STATE_SUCCEEDED:
		return run.GetOutput(), agentUsage(run.GetUsage()), nil
	case agentv1.RunState_RUN_STATE_FAILED, agentv1.RunState_RUN_STATE_CANCELLED:
		return "", agentUsage(run.GetUsage()), fmt.Errorf("agent %s run %s: %s %s", agent, run.GetId(), run.GetState(), run.GetError())
	default:
		// A replay of the key found the run unfinished (its first attempt was cut off): never take that as a
		// result; the step is tried again with the same key and gets the agent's real one.
		return "", nil, fmt.Errorf("agent %s run %s is still %s: %w", agent, run.GetId(), run.GetState(), errUnfinished)
	}
}
