// Package memoryrpc is the memory service's Connect handler: it reads the caller's tenant from the principal,
// converts the contract's messages (loom.memory.v1) to the domain's types (package memory) and back, calls a
// memory.Store, and maps the domain's errors to connect codes in one place.
//
// Validation has one owner per rule. The contract's rules (proto/loom/memory/v1/memory.proto: name patterns,
// ranges of dimension, page_size and top_k, oneofs, list sizes, finite numbers) are protovalidate's, run by the
// RPC server's validation interceptor before a handler is called; the handler does not repeat them. What the
// contract cannot express belongs to the domain (memory.ValidateFilter, memory.CheckRecords and the stores), or,
// for what only concerns the request's shape (a record needs text or a vector; ttl and expire_time exclude each
// other), to the handler here.
package memoryrpc

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
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcerr"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/embed"
)

// Defaults the server applies to fields left at zero.
const (
	DefaultTopK     = 10
	DefaultPageSize = 50
)

// Embedders hands out the embedder of a namespace. *embed.Registry implements it.
type Embedders interface {
	// Embedder returns the embedder of provider ("" means "local") and model producing dim-element vectors.
	// Errors wrap embed.ErrUnknownProvider for a provider that is not configured.
	Embedder(provider, model string, dim int) (embed.Embedder, error)
}

var _ memoryv1connect.MemoryServiceHandler = (*Server)(nil)

// Server implements memoryv1connect.MemoryServiceHandler over a memory.Store. It is safe for concurrent use.
type Server struct {
	logger    *slog.Logger
	errors    *rpcerr.Mapper
	store     memory.Store
	embedders Embedders
	now       func() time.Time
}

// New returns a server. A nil embedders means only the built-in "local" embedder (with a 10,000-vector cache).
func New(logger *slog.Logger, store memory.Store, embedders Embedders) *Server {
	if embedders == nil {
		embedders = embed.NewRegistry(10000)
	}
	return &Server{logger: logger, errors: newErrors(logger), store: store, embedders: embedders, now: time.Now}
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

// toConnect maps a domain error to a connect error through the shared mapping (internal/rpcerr); memory adds
// its quotas (ResourceExhausted with a QuotaFailure detail), embedding failures (Unavailable, logged) and an
// unknown embedding provider (FailedPrecondition).
func (s *Server) toConnect(ctx context.Context, procedure string, err error) error {
	return s.errors.Error(ctx, procedure, err)
}

func newErrors(logger *slog.Logger) *rpcerr.Mapper {
	if logger == nil {
		logger = slog.Default()
	}
	return &rpcerr.Mapper{Logger: logger, Service: "memory", Rules: []rpcerr.Rule{
		func(ctx context.Context, err error) *connect.Error {
			var qe *memory.QuotaError
			if errors.As(err, &qe) {
				return quotaError(ctx, qe)
			}
			return nil
		},
		rpcerr.Is(embed.ErrUnknownProvider, connect.CodeFailedPrecondition),
		func(ctx context.Context, err error) *connect.Error {
			var ee *errEmbed
			if errors.As(err, &ee) {
				logger.WarnContext(ctx, "embedding failed", "error", err)
				return connect.NewError(connect.CodeUnavailable, errors.New("embedding provider failed"))
			}
			return nil
		},
	}}
}

// quotaError is ResourceExhausted naming the quota, with a google.rpc.QuotaFailure detail whose subject is the
// caller's tenant.
func quotaError(ctx context.Context, qe *memory.QuotaError) *connect.Error {
	cerr := connect.NewError(connect.CodeResourceExhausted, errors.New(qe.Error()))
	t := principal.TenantOf(ctx)
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

// CreateNamespace implements memoryv1connect.MemoryServiceHandler. It fills the defaults (metric cosine,
// embedder "local") and checks that the namespace's embedder is configured here.
func (s *Server) CreateNamespace(ctx context.Context, req *connect.Request[memoryv1.CreateNamespaceRequest]) (*connect.Response[memoryv1.CreateNamespaceResponse], error) {
	const proc = "CreateNamespace"
	t := principal.TenantOf(ctx)
	ns := namespaceFromProto(req.Msg.GetNamespace())
	if ns.Metric == 0 {
		ns.Metric = memory.MetricCosine
	}
	if ns.EmbedderProvider == "" {
		ns.EmbedderProvider = "local"
	}
	if _, err := s.embedders.Embedder(ns.EmbedderProvider, ns.EmbedderModel, ns.Dimension); err != nil {
		return nil, s.toConnect(ctx, proc, fmt.Errorf("namespace.embedder.provider: %w", err))
	}
	created, err := s.store.CreateNamespace(ctx, t, ns)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	return connect.NewResponse(&memoryv1.CreateNamespaceResponse{Namespace: NamespaceProto(created, false)}), nil
}

// GetNamespace implements memoryv1connect.MemoryServiceHandler.
func (s *Server) GetNamespace(ctx context.Context, req *connect.Request[memoryv1.GetNamespaceRequest]) (*connect.Response[memoryv1.GetNamespaceResponse], error) {
	t := principal.TenantOf(ctx)
	ns, err := s.store.GetNamespace(ctx, t, req.Msg.GetName(), true)
	if err != nil {
		return nil, s.toConnect(ctx, "GetNamespace", err)
	}
	return connect.NewResponse(&memoryv1.GetNamespaceResponse{Namespace: NamespaceProto(ns, true)}), nil
}

// EncodePageToken returns the opaque token resuming a listing after name.
func EncodePageToken(name string) string { return pagetoken.Encode("namespaces", name) }

// DecodePageToken returns the name a token resumes after; "" for an empty token. Errors are *memory.FieldError
// on "page_token". A token carries a name of the caller's own (every listing is tenant-scoped), so a forged one
// can only skip within the caller's namespaces.
func DecodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	var name string
	if err := pagetoken.Decode("namespaces", tok, &name); err != nil || name == "" {
		return "", memory.Invalidf("page_token", "not a token from a previous response")
	}
	return name, nil
}

// ListNamespaces implements memoryv1connect.MemoryServiceHandler.
func (s *Server) ListNamespaces(ctx context.Context, req *connect.Request[memoryv1.ListNamespacesRequest]) (*connect.Response[memoryv1.ListNamespacesResponse], error) {
	const proc = "ListNamespaces"
	t := principal.TenantOf(ctx)
	size := int(req.Msg.GetPageSize())
	if size <= 0 { // 0 asks for the default; the contract refuses negative sizes and sizes over 1000
		size = DefaultPageSize
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
		resp.Namespaces = append(resp.Namespaces, NamespaceProto(ns, false))
	}
	return connect.NewResponse(resp), nil
}

// DeleteNamespace implements memoryv1connect.MemoryServiceHandler.
func (s *Server) DeleteNamespace(ctx context.Context, req *connect.Request[memoryv1.DeleteNamespaceRequest]) (*connect.Response[memoryv1.DeleteNamespaceResponse], error) {
	t := principal.TenantOf(ctx)
	if err := s.store.DeleteNamespace(ctx, t, req.Msg.GetName()); err != nil {
		return nil, s.toConnect(ctx, "DeleteNamespace", err)
	}
	return connect.NewResponse(&memoryv1.DeleteNamespaceResponse{}), nil
}

// embedder returns the embedder of ns.
func (s *Server) embedder(ns memory.Namespace) (embed.Embedder, error) {
	e, err := s.embedders.Embedder(ns.EmbedderProvider, ns.EmbedderModel, ns.Dimension)
	if err != nil {
		return nil, fmt.Errorf("namespace %q embedder: %w", ns.Name, err)
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

// Upsert implements memoryv1connect.MemoryServiceHandler. It checks what the contract cannot say of a record (it
// needs text or a vector; ttl and expire_time exclude each other), generates missing ids, resolves ttl to an
// expiry, and embeds the records given as text only.
func (s *Server) Upsert(ctx context.Context, req *connect.Request[memoryv1.UpsertRequest]) (*connect.Response[memoryv1.UpsertResponse], error) {
	const proc = "Upsert"
	t := principal.TenantOf(ctx)
	in := req.Msg.GetRecords()
	now := s.now().UTC()
	recs := make([]memory.Record, len(in))
	var needText []int
	for i, p := range in {
		f := fmt.Sprintf("records[%d]", i)
		if p.GetText() == "" && len(p.GetVector()) == 0 {
			return nil, s.toConnect(ctx, proc, memory.Invalidf(f, "text or vector is required"))
		}
		if p.GetTtl() != nil && p.GetExpireTime() != nil {
			return nil, s.toConnect(ctx, proc, memory.Invalidf(f+".ttl", "mutually exclusive with expire_time"))
		}
		r := RecordFromProto(p)
		r.UpdateTime = now // update_time is output only
		if r.ID == "" {
			r.ID = uuid.NewString()
		}
		if p.GetTtl() != nil {
			r.ExpireTime = now.Add(p.GetTtl().AsDuration())
		}
		if len(r.Vector) == 0 {
			needText = append(needText, i)
		}
		recs[i] = r
	}
	if len(needText) > 0 {
		ns, err := s.store.GetNamespace(ctx, t, req.Msg.GetNamespace(), false)
		if err != nil {
			return nil, s.toConnect(ctx, proc, err)
		}
		e, err := s.embedder(ns)
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

// Search implements memoryv1connect.MemoryServiceHandler. A text query is embedded with the namespace's
// embedder by the store's call of Query.Embed, so the namespace is read once.
func (s *Server) Search(ctx context.Context, req *connect.Request[memoryv1.SearchRequest]) (*connect.Response[memoryv1.SearchResponse], error) {
	const proc = "Search"
	t := principal.TenantOf(ctx)
	m := req.Msg
	q := memory.Query{TopK: int(m.GetTopK()), Filter: FilterFromProto(m.GetFilter()), MinScore: m.MinScore, Hybrid: m.GetHybrid(), IncludeVectors: m.GetIncludeVectors()}
	if q.TopK == 0 {
		q.TopK = DefaultTopK
	}
	switch query := m.GetQuery().(type) {
	case *memoryv1.SearchRequest_Vector:
		q.Vector = query.Vector.GetValues()
	case *memoryv1.SearchRequest_Text:
		q.Text = query.Text
		q.Embed = func(ctx context.Context, ns memory.Namespace) ([]float32, error) {
			e, err := s.embedder(ns)
			if err != nil {
				return nil, err
			}
			vs, err := s.embed(ctx, e, []string{query.Text})
			if err != nil {
				return nil, err
			}
			return vs[0], nil
		}
	}
	hits, err := s.store.Search(ctx, t, m.GetNamespace(), q)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	resp := &memoryv1.SearchResponse{Hits: make([]*memoryv1.Hit, len(hits))}
	for i, h := range hits {
		resp.Hits[i] = &memoryv1.Hit{Record: RecordProto(h.Record, q.IncludeVectors), Score: h.Score}
	}
	return connect.NewResponse(resp), nil
}

// Get implements memoryv1connect.MemoryServiceHandler.
func (s *Server) Get(ctx context.Context, req *connect.Request[memoryv1.GetRequest]) (*connect.Response[memoryv1.GetResponse], error) {
	const proc = "Get"
	t := principal.TenantOf(ctx)
	ids := req.Msg.GetIds()
	recs, err := s.store.Get(ctx, t, req.Msg.GetNamespace(), ids, req.Msg.GetIncludeVectors())
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	resp := &memoryv1.GetResponse{}
	found := make(map[string]bool, len(recs))
	for _, r := range recs {
		found[r.ID] = true
		resp.Records = append(resp.Records, RecordProto(r, req.Msg.GetIncludeVectors()))
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
	t := principal.TenantOf(ctx)
	var ids []string
	var filter *memory.Filter
	switch sel := req.Msg.GetSelector().(type) {
	case *memoryv1.DeleteRequest_Ids:
		ids = sel.Ids.GetIds()
	case *memoryv1.DeleteRequest_Filter:
		filter = FilterFromProto(sel.Filter)
	}
	n, err := s.store.Delete(ctx, t, req.Msg.GetNamespace(), ids, filter)
	if err != nil {
		return nil, s.toConnect(ctx, proc, err)
	}
	return connect.NewResponse(&memoryv1.DeleteResponse{DeletedCount: n}), nil
}
