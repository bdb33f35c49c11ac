package agenttest

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
)

// Memory is a fake memory.v1 client kept in process: records per namespace, substring search. Set Latency or
// Down to test degradation. It is safe for concurrent use.
type Memory struct {
	mu       sync.Mutex
	latency  time.Duration
	down     bool
	records  map[string][]*memoryv1.Record
	searches int
	nextID   int
	// hold, when set, makes every call signal entered and wait for release (see Hold).
	hold *hold
}

type hold struct {
	entered chan struct{}
	release chan struct{}
}

var _ memoryv1.MemoryServiceClient = (*Memory)(nil)

// NewMemory returns an empty fake.
func NewMemory() *Memory { return &Memory{records: map[string][]*memoryv1.Record{}} }

// SetLatency delays every call by d (or until the call's context ends).
func (m *Memory) SetLatency(d time.Duration) { m.mu.Lock(); m.latency = d; m.mu.Unlock() }

// SetDown makes every call fail with Unavailable while down is true.
func (m *Memory) SetDown(down bool) { m.mu.Lock(); m.down = down; m.mu.Unlock() }

// Records returns a copy of the records of namespace ns.
func (m *Memory) Records(ns string) []*memoryv1.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*memoryv1.Record(nil), m.records[ns]...)
}

// Searches returns how many Search calls were answered or failed.
func (m *Memory) Searches() int { m.mu.Lock(); defer m.mu.Unlock(); return m.searches }

// Hold makes every later call block until release is called (or its context ends); entered receives once per
// call that blocked. It lets a test act while a run is known to be inside a memory call.
func (m *Memory) Hold() (entered <-chan struct{}, release func()) {
	h := &hold{entered: make(chan struct{}, 64), release: make(chan struct{})}
	m.mu.Lock()
	m.hold = h
	m.mu.Unlock()
	var once sync.Once
	return h.entered, func() {
		once.Do(func() {
			m.mu.Lock()
			m.hold = nil
			m.mu.Unlock()
			close(h.release)
		})
	}
}

func (m *Memory) wait(ctx context.Context) error {
	m.mu.Lock()
	lat, down, h := m.latency, m.down, m.hold
	m.mu.Unlock()
	if h != nil {
		select {
		case h.entered <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-h.release:
		}
	}
	if lat > 0 {
		t := time.NewTimer(lat)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if down {
		return status.Error(codes.Unavailable, "memory is down")
	}
	return nil
}

// Upsert stores records, replacing those with the same id.
func (m *Memory) Upsert(ctx context.Context, in *memoryv1.UpsertRequest, _ ...grpc.CallOption) (*memoryv1.UpsertResponse, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for _, r := range in.GetRecords() {
		id := r.GetId()
		if id == "" {
			m.nextID++
			id = "rec-" + strconv.Itoa(m.nextID)
		}
		ids = append(ids, id)
		rec := &memoryv1.Record{Id: id, Text: r.GetText(), Metadata: r.GetMetadata()}
		recs := m.records[in.GetNamespace()]
		replaced := false
		for j, old := range recs {
			if old.GetId() == id {
				recs[j], replaced = rec, true
			}
		}
		if !replaced {
			recs = append(recs, rec)
		}
		m.records[in.GetNamespace()] = recs
	}
	return &memoryv1.UpsertResponse{Ids: ids}, nil
}

// Search returns records whose text shares a word with the query, scored by the fraction of query words they
// contain, best first.
func (m *Memory) Search(ctx context.Context, in *memoryv1.SearchRequest, _ ...grpc.CallOption) (*memoryv1.SearchResponse, error) {
	m.mu.Lock()
	m.searches++
	m.mu.Unlock()
	if err := m.wait(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	words := strings.Fields(strings.ToLower(in.GetText()))
	var hits []*memoryv1.Hit
	for _, r := range m.records[in.GetNamespace()] {
		n := 0
		for _, w := range words {
			if strings.Contains(strings.ToLower(r.GetText()), w) {
				n++
			}
		}
		if n > 0 {
			hits = append(hits, &memoryv1.Hit{Record: r, Score: float32(n) / float32(len(words))})
		}
	}
	for i := 1; i < len(hits); i++ {
		for j := i; j > 0 && hits[j].GetScore() > hits[j-1].GetScore(); j-- {
			hits[j], hits[j-1] = hits[j-1], hits[j]
		}
	}
	k := int(in.GetTopK())
	if k == 0 {
		k = 10
	}
	if len(hits) > k {
		hits = hits[:k]
	}
	return &memoryv1.SearchResponse{Hits: hits}, nil
}

// CreateNamespace is not used by the agent service.
func (m *Memory) CreateNamespace(context.Context, *memoryv1.CreateNamespaceRequest, ...grpc.CallOption) (*memoryv1.CreateNamespaceResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

// GetNamespace is not used by the agent service.
func (m *Memory) GetNamespace(context.Context, *memoryv1.GetNamespaceRequest, ...grpc.CallOption) (*memoryv1.GetNamespaceResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

// ListNamespaces is not used by the agent service.
func (m *Memory) ListNamespaces(context.Context, *memoryv1.ListNamespacesRequest, ...grpc.CallOption) (*memoryv1.ListNamespacesResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

// DeleteNamespace is not used by the agent service.
func (m *Memory) DeleteNamespace(context.Context, *memoryv1.DeleteNamespaceRequest, ...grpc.CallOption) (*memoryv1.DeleteNamespaceResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

// Get is not used by the agent service.
func (m *Memory) Get(context.Context, *memoryv1.GetRequest, ...grpc.CallOption) (*memoryv1.GetResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

// Delete is not used by the agent service.
func (m *Memory) Delete(context.Context, *memoryv1.DeleteRequest, ...grpc.CallOption) (*memoryv1.DeleteResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}
