// Package memory is Loom's memory service: semantic memory for agents. Namespaces hold records (text, a vector,
// typed metadata, an optional expiry) searched by vector similarity, optionally filtered by metadata and fused
// with full-text ranking (hybrid search).
//
// The package holds the domain: the Store interface its backends implement (memory/localstore, the embedded
// default, and memory/pgstore, PostgreSQL + pgvector), the filter semantics, and Server, the thin Connect
// handler. Every call is scoped to the caller's tenant, taken from the principal in the request context and never
// from a request field.
package memory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/dberr"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/memory/embed"
)

// Defaults applied by the server.
const (
	DefaultTopK     = 10
	DefaultPageSize = 50
	MaxBatch        = 1000
	MaxTopK         = 1000
	MaxPageSize     = 1000
)

// Embedders hands out the embedder of a namespace. *embed.Registry implements it.
type Embedders interface {
	// Embedder returns the embedder of provider ("" means "local") and model producing dim-element vectors.
	// Errors wrap embed.ErrUnknownProvider for a provider that is not configured.
	Embedder(provider, model string, dim int) (embed.Embedder, error)
}

var _ memoryv1connect.MemoryServiceHandler = (*Server)(nil)

// Server implements memoryv1connect.MemoryServiceHandler over a Store. It is safe for concurrent use.
type Server struct {
	logger    *slog.Logger
	store     Store
	embedders Embedders
	now       func() time.Time
}

// New returns a server. A nil embedders means only the built-in "local" embedder (with a 10,000-vector cache).
func New(logger *slog.Logger, store Store, embedders Embedders) *Server {
	if embedders == nil {
		embedders = embed.NewRegistry(10000)
	}
	return &Server{logger: logger, store: store, embedders: embedders, now: time.Now}
}

// Service returns the service for the RPC server; Ready pings the store.
func (s *Server) Service() rpcserver.Service {
	return rpcserver.Service{
		Name: memoryv1connect.MemoryServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(s, opts...)
		},
		Ready: s.store.Ping,
	}
}

// errEmbed marks a failure of an embedding provider.
type errEmbed struct{ err error }

func (e *errEmbed) Error() string { return "embed: " + e.err.Error() }
func (e *errEmbed) Unwrap() error { return e.err }

// toConnect maps a domain error to a connect error; it is the one place codes are chosen. Client mistakes carry
// their message (naming the field); server faults are logged and answered with a generic Internal.
func (s *Server) toConnect(ctx context.Context, procedure string, err error) error {
	var ce *connect.Error
	var fe *FieldError
	var ee *errEmbed
	var qe *QuotaError
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, principal.ErrNoPrincipal):
		return connect.NewError(connect.CodeUnauthenticated, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.As(err, &fe):
		return connect.NewError(connect.CodeInvalidArgument, errors.New(fe.Error()))
	case errors.Is(err, ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.As(err, &qe):
		return quotaError(ctx, qe)
	case errors.Is(err, ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, ErrAlreadyExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, ErrFailedPrecondition), errors.Is(err, embed.ErrUnknownProvider):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case dberr.Unavailable(err):
		s.logger.WarnContext(ctx, "database unavailable", "error", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("database unavailable"))
	case errors.As(err, &ee):
		s.logger.WarnContext(ctx, "embedding failed", "procedure", procedure, "error", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("embedding provider failed"))
	}
	s.logger.ErrorContext(ctx, "internal error", "procedure", procedure, "error", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// quotaError is ResourceExhausted naming the quota, with a google.rpc.QuotaFailure detail whose subject is the
// caller's tenant.
func quotaError(ctx context.Context, qe *QuotaError) *connect.Error {
	cerr := connect.NewError(connect.CodeResourceExhausted, errors.New(qe.Error()))
	t, _ := principal.Tenant(ctx)
	if d, err := connect.NewErrorDetail(&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{
		Subject:     "tenant:" + t,
		Description: qe.Error(),
		ApiService:  memoryv1connect.MemoryServiceName,
		QuotaMetric: "memory." + qe.Quota, // memory.namespaces, memory.records, memory.bytes
		QuotaId:     "memory-max-" + qe.Quota,
		QuotaValue:  qe.Limit,
	}}}); err == nil {
		cerr.AddDetail(d)
	}
	return cerr
}

// CreateNamespace implements memoryv1connect.MemoryServiceHandler.
func (s *Server) CreateNamespace(ctx context.Context, req *connect.Request[memoryv1.CreateNamespaceRequest]) (*connect.Response[memoryv1.CreateNamespaceResponse], error) {
	const proc = "CreateNamespace"
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	p := req.Msg.GetNamespace()
	if p == nil {
		return nil, s.toConnect(ctx, proc, Invalidf("namespace", "is required"))
	}
	ns := NamespaceFromProto(p)
	ns.CreateTime, ns.Stats = time.Time{}, NamespaceStats{}
	if ns.Metric == 0 {
		ns.Metric = MetricCosine
	}
	if ns.EmbedderProvider == "" {
		ns.EmbedderProvider = "local"
	}
	if err := checkName("namespace.name", ns.Name); err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	if ns.Dimension < 1 || ns.Dimension > 4096 {
		return nil, s.toConnect(ctx, proc, Invalidf("namespace.dimension", "must be in [1, 4096], got %d", ns.Dimension))
	}
	if _, err := s.embedders.Embedder(ns.EmbedderProvider, ns.EmbedderModel, ns.Dimension); err != nil {
		return nil, s.toConnect(ctx, proc, fmt.Errorf("namespace.embedder.provider: %w", err))
	}
	created, err := s.store.CreateNamespace(ctx, t, ns)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	return connect.NewResponse(&memoryv1.CreateNamespaceResponse{Namespace: created.Proto()}), nil
}

func checkName(field, name string) error {
	if name == "" || len(name) > 63 || name[0] < 'a' || name[0] > 'z' {
		return Invalidf(field, "must match ^[a-z][a-z0-9_-]{0,62}$")
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return Invalidf(field, "must match ^[a-z][a-z0-9_-]{0,62}$")
		}
	}
	return nil
}

// GetNamespace implements memoryv1connect.MemoryServiceHandler.
func (s *Server) GetNamespace(ctx context.Context, req *connect.Request[memoryv1.GetNamespaceRequest]) (*connect.Response[memoryv1.GetNamespaceResponse], error) {
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, "GetNamespace", err)
	}
	ns, err := s.store.GetNamespace(ctx, t, req.Msg.GetName(), true)
	if err != nil {
		return nil, s.toConnect(ctx, "GetNamespace", err)
	}
	p := ns.Proto()
	p.Stats = &memoryv1.NamespaceStats{RecordCount: ns.Stats.RecordCount, SizeBytes: ns.Stats.SizeBytes}
	return connect.NewResponse(&memoryv1.GetNamespaceResponse{Namespace: p}), nil
}

// EncodePageToken returns the opaque token resuming a listing after name.
func EncodePageToken(name string) string { return pagetoken.Encode("namespaces", name) }

// DecodePageToken returns the name a token resumes after; "" for an empty token. Errors are *FieldError on
// "page_token".
func DecodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	var name string
	if err := pagetoken.Decode("namespaces", tok, &name); err != nil || checkName("page_token", name) != nil {
		return "", Invalidf("page_token", "not a token from a previous response")
	}
	return name, nil
}

// ListNamespaces implements memoryv1connect.MemoryServiceHandler.
func (s *Server) ListNamespaces(ctx context.Context, req *connect.Request[memoryv1.ListNamespacesRequest]) (*connect.Response[memoryv1.ListNamespacesResponse], error) {
	const proc = "ListNamespaces"
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	size := int(req.Msg.GetPageSize())
	switch {
	case size == 0:
		size = DefaultPageSize
	case size < 0 || size > MaxPageSize:
		return nil, s.toConnect(ctx, proc, Invalidf("page_size", "must be in [0, %d]", MaxPageSize))
	}
	after, err := DecodePageToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	nss, err := s.store.ListNamespaces(ctx, t, after, size+1)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	resp := &memoryv1.ListNamespacesResponse{}
	if len(nss) > size {
		nss = nss[:size]
		resp.NextPageToken = EncodePageToken(nss[size-1].Name)
	}
	for _, ns := range nss {
		resp.Namespaces = append(resp.Namespaces, ns.Proto())
	}
	return connect.NewResponse(resp), nil
}

// DeleteNamespace implements memoryv1connect.MemoryServiceHandler.
func (s *Server) DeleteNamespace(ctx context.Context, req *connect.Request[memoryv1.DeleteNamespaceRequest]) (*connect.Response[memoryv1.DeleteNamespaceResponse], error) {
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, "DeleteNamespace", err)
	}
	if err := s.store.DeleteNamespace(ctx, t, req.Msg.GetName()); err != nil {
		return nil, s.toConnect(ctx, "DeleteNamespace", err)
	}
	return connect.NewResponse(&memoryv1.DeleteNamespaceResponse{}), nil
}

// embedder returns the embedder of a namespace.
func (s *Server) embedder(ctx context.Context, t, name string) (embed.Embedder, error) {
	ns, err := s.store.GetNamespace(ctx, t, name, false)
	if err != nil {
		return nil, err
	}
	e, err := s.embedders.Embedder(ns.EmbedderProvider, ns.EmbedderModel, ns.Dimension)
	if err != nil {
		return nil, fmt.Errorf("namespace %q embedder: %w", name, err)
	}
	return e, nil
}

func (s *Server) embed(ctx context.Context, e embed.Embedder, texts []string) ([][]float32, error) {
	vs, err := e.Embed(ctx, texts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &errEmbed{err}
	}
	if len(vs) != len(texts) {
		return nil, &errEmbed{fmt.Errorf("%d vectors for %d texts", len(vs), len(texts))}
	}
	return vs, nil
}

// Upsert implements memoryv1connect.MemoryServiceHandler.
func (s *Server) Upsert(ctx context.Context, req *connect.Request[memoryv1.UpsertRequest]) (*connect.Response[memoryv1.UpsertResponse], error) {
	const proc = "Upsert"
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	in := req.Msg.GetRecords()
	if len(in) == 0 || len(in) > MaxBatch {
		return nil, s.toConnect(ctx, proc, Invalidf("records", "must hold 1 to %d records, got %d", MaxBatch, len(in)))
	}
	now := s.now().UTC()
	recs := make([]Record, len(in))
	var needText []int
	for i, p := range in {
		f := fmt.Sprintf("records[%d]", i)
		if p.GetText() == "" && len(p.GetVector()) == 0 {
			return nil, s.toConnect(ctx, proc, Invalidf(f, "text or vector is required"))
		}
		if p.GetTtl() != nil && p.GetExpireTime() != nil {
			return nil, s.toConnect(ctx, proc, Invalidf(f+".ttl", "mutually exclusive with expire_time"))
		}
		r := Record{ID: p.GetId(), Text: p.GetText(), Vector: p.GetVector(), Metadata: p.GetMetadata(), UpdateTime: now}
		if r.ID == "" {
			r.ID = uuid.NewString()
		}
		switch {
		case p.GetTtl() != nil:
			d := p.GetTtl().AsDuration()
			if d < time.Second {
				return nil, s.toConnect(ctx, proc, Invalidf(f+".ttl", "must be at least 1s"))
			}
			r.ExpireTime = now.Add(d)
		case p.GetExpireTime() != nil:
			r.ExpireTime = p.GetExpireTime().AsTime()
		}
		if len(r.Vector) == 0 {
			needText = append(needText, i)
		}
		recs[i] = r
	}
	if len(needText) > 0 {
		e, err := s.embedder(ctx, t, req.Msg.GetNamespace())
		if err != nil {
			return nil, s.toConnect(ctx, proc, err)
		}
		texts := make([]string, len(needText))
		for j, i := range needText {
			texts[j] = recs[i].Text
		}
		vs, err := s.embed(ctx, e, texts)
		if err != nil {
			return nil, s.toConnect(ctx, proc, err)
		}
		for j, i := range needText {
			recs[i].Vector = vs[j]
		}
	}
	if err := s.store.Upsert(ctx, t, req.Msg.GetNamespace(), recs); err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	return connect.NewResponse(&memoryv1.UpsertResponse{Ids: ids}), nil
}

// Search implements memoryv1connect.MemoryServiceHandler.
func (s *Server) Search(ctx context.Context, req *connect.Request[memoryv1.SearchRequest]) (*connect.Response[memoryv1.SearchResponse], error) {
	const proc = "Search"
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	m := req.Msg
	q := Query{TopK: int(m.GetTopK()), Filter: m.GetFilter(), MinScore: m.MinScore, Hybrid: m.GetHybrid(), IncludeVectors: m.GetIncludeVectors()}
	switch {
	case q.TopK == 0:
		q.TopK = DefaultTopK
	case q.TopK < 0 || q.TopK > MaxTopK:
		return nil, s.toConnect(ctx, proc, Invalidf("top_k", "must be in [0, %d]", MaxTopK))
	}
	if err := ValidateFilter("filter", q.Filter); err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	switch query := m.GetQuery().(type) {
	case *memoryv1.SearchRequest_Vector:
		if len(query.Vector.GetValues()) == 0 {
			return nil, s.toConnect(ctx, proc, Invalidf("vector.values", "must not be empty"))
		}
		q.Vector = query.Vector.GetValues()
		if q.Hybrid {
			return nil, s.toConnect(ctx, proc, Invalidf("hybrid", "needs a text query"))
		}
	case *memoryv1.SearchRequest_Text:
		if query.Text == "" {
			return nil, s.toConnect(ctx, proc, Invalidf("text", "must not be empty"))
		}
		q.Text = query.Text
		e, err := s.embedder(ctx, t, m.GetNamespace())
		if err != nil {
			return nil, s.toConnect(ctx, proc, err)
		}
		vs, err := s.embed(ctx, e, []string{q.Text})
		if err != nil {
			return nil, s.toConnect(ctx, proc, err)
		}
		q.Vector = vs[0]
	default:
		return nil, s.toConnect(ctx, proc, Invalidf("query", "text or vector is required"))
	}
	hits, err := s.store.Search(ctx, t, m.GetNamespace(), q)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	resp := &memoryv1.SearchResponse{Hits: make([]*memoryv1.Hit, len(hits))}
	for i, h := range hits {
		resp.Hits[i] = &memoryv1.Hit{Record: h.Record.Proto(q.IncludeVectors), Score: h.Score}
	}
	return connect.NewResponse(resp), nil
}

// Get implements memoryv1connect.MemoryServiceHandler.
func (s *Server) Get(ctx context.Context, req *connect.Request[memoryv1.GetRequest]) (*connect.Response[memoryv1.GetResponse], error) {
	const proc = "Get"
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	ids := req.Msg.GetIds()
	if len(ids) == 0 || len(ids) > MaxBatch {
		return nil, s.toConnect(ctx, proc, Invalidf("ids", "must hold 1 to %d ids, got %d", MaxBatch, len(ids)))
	}
	recs, err := s.store.Get(ctx, t, req.Msg.GetNamespace(), ids, req.Msg.GetIncludeVectors())
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	resp := &memoryv1.GetResponse{}
	found := make(map[string]bool, len(recs))
	for _, r := range recs {
		found[r.ID] = true
		resp.Records = append(resp.Records, r.Proto(req.Msg.GetIncludeVectors()))
	}
	for _, id := range ids {
		if !found[id] {
			resp.MissingIds = append(resp.MissingIds, id)
		}
	}
	return connect.NewResponse(resp), nil
}

// Delete implements memoryv1connect.MemoryServiceHandler.
func (s *Server) Delete(ctx context.Context, req *connect.Request[memoryv1.DeleteRequest]) (*connect.Response[memoryv1.DeleteResponse], error) {
	const proc = "Delete"
	t, err := principal.Tenant(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	var ids []string
	var filter *memoryv1.Filter
	switch sel := req.Msg.GetSelector().(type) {
	case *memoryv1.DeleteRequest_Ids:
		ids = sel.Ids.GetIds()
		if len(ids) == 0 || len(ids) > MaxBatch {
			return nil, s.toConnect(ctx, proc, Invalidf("ids.ids", "must hold 1 to %d ids, got %d", MaxBatch, len(ids)))
		}
	case *memoryv1.DeleteRequest_Filter:
		filter = sel.Filter
		if filter == nil {
			return nil, s.toConnect(ctx, proc, Invalidf("filter", "is required"))
		}
		if err := ValidateFilter("filter", filter); err != nil {
			return nil, s.toConnect(ctx, proc, err)
		}
	default:
		return nil, s.toConnect(ctx, proc, Invalidf("selector", "ids or filter is required"))
	}
	n, err := s.store.Delete(ctx, t, req.Msg.GetNamespace(), ids, filter)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	return connect.NewResponse(&memoryv1.DeleteResponse{DeletedCount: n}), nil
}
