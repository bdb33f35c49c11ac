package orchestratortest

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/grpc"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

// Agents is a fake agentv1.AgentServiceClient. Run answers with Respond (default: "<agent>: <input>") and, like
// the real service, returns the first run again for a repeated idempotency key. Only Run is implemented; the
// other methods panic (the embedded interface is nil). Safe for concurrent use.
type Agents struct {
	agentv1.AgentServiceClient

	// Respond computes the output of a call; an error fails the RPC. It may block on ctx.
	Respond func(ctx context.Context, req *agentv1.RunRequest) (string, error)
	// Usage, when set, gives each new run its usage and cost.
	Usage func(req *agentv1.RunRequest) *agentv1.Usage

	mu    sync.Mutex
	calls []*agentv1.RunRequest
	runs  map[string]*agentv1.Run
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
	r := &agentv1.Run{Id: "agent-run-" + req.GetIdempotencyKey(), Agent: req.GetAgent(), Input: req.GetInput(),
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
