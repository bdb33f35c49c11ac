package orchestratortest

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

// Agents is a fake agentv1.AgentServiceClient. Run answers with Respond (default: "<agent>: <input>") and, like
// the real service, returns the first run again for a repeated idempotency key. RunStream answers the same way
// (its request is recorded as the RunRequest with the same fields) and streams the output as text deltas, one
// per word, before the completed event; a replayed key streams no deltas, as the real service. GetAgent answers
// from Versions. The other methods panic (the embedded interface is nil). Safe for concurrent use.
type Agents struct {
	agentv1.AgentServiceClient

	// Respond computes the output of a call; an error fails the RPC. It may block on ctx.
	Respond func(ctx context.Context, req *agentv1.RunRequest) (string, error)
	// Usage, when set, gives each new run its usage and cost.
	Usage func(req *agentv1.RunRequest) *agentv1.Usage
	// Versions, when set, gives each agent's versions (ascending; GetAgent of version 0 is the last); an agent
	// not in it is NotFound. Nil: every agent exists at version 1 only.
	Versions map[string][]int64

	mu    sync.Mutex
	calls []*agentv1.RunRequest
	runs  map[string]*agentv1.Run
}

// Failing returns fake agents whose every run fails with err (and is still recorded in Calls).
func Failing(err error) *Agents {
	return &Agents{Respond: func(context.Context, *agentv1.RunRequest) (string, error) { return "", err }}
}

// Run implements agentv1.AgentServiceClient.
func (a *Agents) Run(ctx context.Context, req *agentv1.RunRequest, _ ...grpc.CallOption) (*agentv1.RunResponse, error) {
	a.mu.Lock()
	a.calls = append(a.calls, req)
	if r, ok := a.runs[req.GetIdempotencyKey()]; ok && req.GetIdempotencyKey() != "" {
		a.mu.Unlock()
		return &agentv1.RunResponse{Run: r}, nil
	}
	respond, usage := a.Respond, a.Usage
	a.mu.Unlock()
	out := req.GetAgent() + ": " + req.GetInput()
	if respond != nil {
		var err error
		if out, err = respond(ctx, req); err != nil {
			return nil, err
		}
	}
	r := &agentv1.Run{Id: "agent-run-" + req.GetIdempotencyKey(), Agent: req.GetAgent(), AgentVersion: req.GetAgentVersion(), Input: req.GetInput(),
		Output: out, State: agentv1.RunState_RUN_STATE_SUCCEEDED, IdempotencyKey: req.GetIdempotencyKey()}
	if usage != nil {
		r.Usage = usage(req)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runs == nil {
		a.runs = make(map[string]*agentv1.Run)
	}
	a.runs[req.GetIdempotencyKey()] = r
	return &agentv1.RunResponse{Run: r}, nil
}

// GetAgent implements agentv1.AgentServiceClient from Versions.
func (a *Agents) GetAgent(_ context.Context, req *agentv1.GetAgentRequest, _ ...grpc.CallOption) (*agentv1.GetAgentResponse, error) {
	a.mu.Lock()
	versions, ok := a.Versions[req.GetName()]
	if a.Versions == nil {
		versions, ok = []int64{1}, true
	}
	a.mu.Unlock()
	if ok && len(versions) > 0 {
		if req.GetVersion() == 0 {
			return &agentv1.GetAgentResponse{Agent: &agentv1.Agent{Name: req.GetName(), Version: versions[len(versions)-1]}}, nil
		}
		if slices.Contains(versions, req.GetVersion()) {
			return &agentv1.GetAgentResponse{Agent: &agentv1.Agent{Name: req.GetName(), Version: req.GetVersion()}}, nil
		}
		return nil, status.Errorf(codes.NotFound, "agent %q version %d: not found", req.GetName(), req.GetVersion())
	}
	return nil, status.Errorf(codes.NotFound, "agent %q: not found", req.GetName())
}

// SetVersions replaces Versions (safe while runs call GetAgent).
func (a *Agents) SetVersions(v map[string][]int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.Versions = v
}

// RunStream implements agentv1.AgentServiceClient with Run (see Agents).
func (a *Agents) RunStream(ctx context.Context, req *agentv1.RunStreamRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[agentv1.RunStreamResponse], error) {
	a.mu.Lock()
	_, replay := a.runs[req.GetIdempotencyKey()]
	replay = replay && req.GetIdempotencyKey() != ""
	a.mu.Unlock()
	return StreamRun(ctx, req, a.Run, !replay)
}

// UnaryRequest is the RunRequest with the fields of req.
func UnaryRequest(req *agentv1.RunStreamRequest) *agentv1.RunRequest {
	return &agentv1.RunRequest{Agent: req.GetAgent(), Input: req.GetInput(), IdempotencyKey: req.GetIdempotencyKey(),
		Attachments: req.GetAttachments(), Chaos: req.GetChaos(), Attempt: req.GetAttempt(), Blueprint: req.GetBlueprint(),
		AgentVersion: req.GetAgentVersion()}
}

// StreamRun answers a RunStream call with a unary Run implementation: run's error is the stream's (from its first
// Recv, as a gRPC stream reports it), and its run is streamed as the real service does: started, the output
// as one text delta per word when deltas is set, then completed (succeeded) or failed (any other state).
func StreamRun(ctx context.Context, req *agentv1.RunStreamRequest, run func(context.Context, *agentv1.RunRequest, ...grpc.CallOption) (*agentv1.RunResponse, error), deltas bool) (grpc.ServerStreamingClient[agentv1.RunStreamResponse], error) {
	resp, err := run(ctx, UnaryRequest(req))
	if err != nil {
		return &stream{ctx: ctx, err: err}, nil
	}
	r := resp.GetRun()
	evs := []*agentv1.RunStreamResponse{{RunId: r.GetId(), Event: &agentv1.RunStreamResponse_Started{Started: &agentv1.RunStarted{AgentVersion: r.GetAgentVersion()}}}}
	if deltas && r.GetState() == agentv1.RunState_RUN_STATE_SUCCEEDED {
		for _, w := range strings.SplitAfter(r.GetOutput(), " ") {
			if w != "" {
				evs = append(evs, &agentv1.RunStreamResponse{RunId: r.GetId(), Event: &agentv1.RunStreamResponse_TextDelta{TextDelta: &agentv1.TextDelta{Text: w}}})
			}
		}
	}
	if r.GetState() == agentv1.RunState_RUN_STATE_SUCCEEDED {
		evs = append(evs, &agentv1.RunStreamResponse{RunId: r.GetId(), Event: &agentv1.RunStreamResponse_Completed{Completed: r}})
	} else {
		evs = append(evs, &agentv1.RunStreamResponse{RunId: r.GetId(), Event: &agentv1.RunStreamResponse_Failed{Failed: r}})
	}
	return &stream{ctx: ctx, events: evs}, nil
}

// AgentAt is a fake agentv1.AgentServiceClient whose GetAgent finds every agent at one version, Version, and
// no other. The other methods panic; embed it to add them.
type AgentAt struct {
	agentv1.AgentServiceClient
	Version int64
}

// GetAgent implements agentv1.AgentServiceClient.
func (a AgentAt) GetAgent(_ context.Context, req *agentv1.GetAgentRequest, _ ...grpc.CallOption) (*agentv1.GetAgentResponse, error) {
	if req.GetVersion() != 0 && req.GetVersion() != a.Version {
		return nil, status.Errorf(codes.NotFound, "agent %q version %d: not found", req.GetName(), req.GetVersion())
	}
	return &agentv1.GetAgentResponse{Agent: &agentv1.Agent{Name: req.GetName(), Version: a.Version}}, nil
}

// stream is a fake server stream: its events, then io.EOF, or err.
type stream struct {
	grpc.ClientStream
	ctx    context.Context
	events []*agentv1.RunStreamResponse
	err    error
}

func (s *stream) Recv() (*agentv1.RunStreamResponse, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if s.err != nil {
		return nil, s.err
	}
	if len(s.events) == 0 {
		return nil, io.EOF
	}
	ev := s.events[0]
	s.events = s.events[1:]
	return ev, nil
}

func (s *stream) Context() context.Context { return s.ctx }

// Calls returns the Run requests received so far, in order.
func (a *Agents) Calls() []*agentv1.RunRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*agentv1.RunRequest(nil), a.calls...)
}

// Memory is a fake memoryv1.MemoryServiceClient holding records in memory. Upsert and Search (substring match on
// the text query) are implemented; the other methods panic. Safe for concurrent use.
type Memory struct {
	memoryv1.MemoryServiceClient

	mu      sync.Mutex
	records map[string]map[string]*memoryv1.Record // namespace -> id -> record
}

// Upsert implements memoryv1.MemoryServiceClient.
func (m *Memory) Upsert(_ context.Context, req *memoryv1.UpsertRequest, _ ...grpc.CallOption) (*memoryv1.UpsertResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.records == nil {
		m.records = make(map[string]map[string]*memoryv1.Record)
	}
	ns := m.records[req.GetNamespace()]
	if ns == nil {
		ns = make(map[string]*memoryv1.Record)
		m.records[req.GetNamespace()] = ns
	}
	for _, r := range req.GetRecords() {
		ns[r.GetId()] = r
	}
	return &memoryv1.UpsertResponse{}, nil
}

// Search implements memoryv1.MemoryServiceClient.
func (m *Memory) Search(_ context.Context, req *memoryv1.SearchRequest, _ ...grpc.CallOption) (*memoryv1.SearchResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	resp := &memoryv1.SearchResponse{}
	for _, r := range m.records[req.GetNamespace()] {
		if strings.Contains(r.GetText(), req.GetText()) && len(resp.Hits) < int(req.GetTopK()) {
			resp.Hits = append(resp.Hits, &memoryv1.Hit{Record: r, Score: 1})
		}
	}
	return resp, nil
}

// Records returns the records of a namespace.
func (m *Memory) Records(namespace string) []*memoryv1.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*memoryv1.Record
	for _, r := range m.records[namespace] {
		out = append(out, r)
	}
	return out
}
