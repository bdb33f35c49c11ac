package memoryrpc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/memory/localstore"
	"github.com/loom-dev/loom/memory/memoryrpc"
)

// client is the subset of the service the tests call, implemented over a Connect client and a grpc-go client.
type client interface {
	CreateNamespace(context.Context, *memoryv1.CreateNamespaceRequest) (*memoryv1.CreateNamespaceResponse, error)
	GetNamespace(context.Context, *memoryv1.GetNamespaceRequest) (*memoryv1.GetNamespaceResponse, error)
	ListNamespaces(context.Context, *memoryv1.ListNamespacesRequest) (*memoryv1.ListNamespacesResponse, error)
	DeleteNamespace(context.Context, *memoryv1.DeleteNamespaceRequest) (*memoryv1.DeleteNamespaceResponse, error)
	Upsert(context.Context, *memoryv1.UpsertRequest) (*memoryv1.UpsertResponse, error)
	Search(context.Context, *memoryv1.SearchRequest) (*memoryv1.SearchResponse, error)
	Get(context.Context, *memoryv1.GetRequest) (*memoryv1.GetResponse, error)
	Delete(context.Context, *memoryv1.DeleteRequest) (*memoryv1.DeleteResponse, error)
}

type connectClient struct {
	c memoryv1connect.MemoryServiceClient
}

func call[Req, Resp any](ctx context.Context, f func(context.Context, *connect.Request[Req]) (*connect.Response[Resp], error), req *Req) (*Resp, error) {
	r := connect.NewRequest(req)
	if t, ok := ctx.Value(tenantKey{}).(string); ok {
		r.Header().Set("x-test-tenant", t)
	}
	if s, ok := ctx.Value(subjectKey{}).(string); ok {
		r.Header().Set("x-test-subject", s)
	}
	resp, err := f(ctx, r)
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func (c connectClient) CreateNamespace(ctx context.Context, r *memoryv1.CreateNamespaceRequest) (*memoryv1.CreateNamespaceResponse, error) {
	return call(ctx, c.c.CreateNamespace, r)
}
func (c connectClient) GetNamespace(ctx context.Context, r *memoryv1.GetNamespaceRequest) (*memoryv1.GetNamespaceResponse, error) {
	return call(ctx, c.c.GetNamespace, r)
}
func (c connectClient) ListNamespaces(ctx context.Context, r *memoryv1.ListNamespacesRequest) (*memoryv1.ListNamespacesResponse, error) {
	return call(ctx, c.c.ListNamespaces, r)
}
func (c connectClient) DeleteNamespace(ctx context.Context, r *memoryv1.DeleteNamespaceRequest) (*memoryv1.DeleteNamespaceResponse, error) {
	return call(ctx, c.c.DeleteNamespace, r)
}
func (c connectClient) Upsert(ctx context.Context, r *memoryv1.UpsertRequest) (*memoryv1.UpsertResponse, error) {
	return call(ctx, c.c.Upsert, r)
}
func (c connectClient) Search(ctx context.Context, r *memoryv1.SearchRequest) (*memoryv1.SearchResponse, error) {
	return call(ctx, c.c.Search, r)
}
func (c connectClient) Get(ctx context.Context, r *memoryv1.GetRequest) (*memoryv1.GetResponse, error) {
	return call(ctx, c.c.Get, r)
}
func (c connectClient) Delete(ctx context.Context, r *memoryv1.DeleteRequest) (*memoryv1.DeleteResponse, error) {
	return call(ctx, c.c.Delete, r)
}

// grpcClient adapts the generated grpc-go client, sending the test tenant as metadata.
type grpcClient struct{ c memoryv1.MemoryServiceClient }

func md(ctx context.Context) context.Context {
	if t, ok := ctx.Value(tenantKey{}).(string); ok {
		return metadata.AppendToOutgoingContext(ctx, "x-test-tenant", t)
	}
	return ctx
}

func (g grpcClient) CreateNamespace(ctx context.Context, r *memoryv1.CreateNamespaceRequest) (*memoryv1.CreateNamespaceResponse, error) {
	return g.c.CreateNamespace(md(ctx), r)
}
func (g grpcClient) GetNamespace(ctx context.Context, r *memoryv1.GetNamespaceRequest) (*memoryv1.GetNamespaceResponse, error) {
	return g.c.GetNamespace(md(ctx), r)
}
func (g grpcClient) ListNamespaces(ctx context.Context, r *memoryv1.ListNamespacesRequest) (*memoryv1.ListNamespacesResponse, error) {
	return g.c.ListNamespaces(md(ctx), r)
}
func (g grpcClient) DeleteNamespace(ctx context.Context, r *memoryv1.DeleteNamespaceRequest) (*memoryv1.DeleteNamespaceResponse, error) {
	return g.c.DeleteNamespace(md(ctx), r)
}
func (g grpcClient) Upsert(ctx context.Context, r *memoryv1.UpsertRequest) (*memoryv1.UpsertResponse, error) {
	return g.c.Upsert(md(ctx), r)
}
func (g grpcClient) Search(ctx context.Context, r *memoryv1.SearchRequest) (*memoryv1.SearchResponse, error) {
	return g.c.Search(md(ctx), r)
}
func (g grpcClient) Get(ctx context.Context, r *memoryv1.GetRequest) (*memoryv1.GetResponse, error) {
	return g.c.Get(md(ctx), r)
}
func (g grpcClient) Delete(ctx context.Context, r *memoryv1.DeleteRequest) (*memoryv1.DeleteResponse, error) {
	return g.c.Delete(md(ctx), r)
}

type tenantKey struct{}

// withTenant makes the test clients call as tenant; "-" calls with no principal at all.
func withTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, tenantKey{}, tenant)
}

// serve starts the service over HTTP/1.1 and h2c and returns a Connect client and a grpc-go client.
func serve(t *testing.T) map[string]client {
	t.Helper()
	store, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv := memoryrpc.New(slog.New(slog.NewTextHandler(io.Discard, nil)), store, nil)
	svc := srv.Service()
	// The real server (interceptors, limits); the tenant comes from a test header: none means the local
	// development principal, "-" an unauthenticated call, "~" a principal without a tenant.
	auth := func(r *http.Request) (principal.Principal, error) {
		switch tn := r.Header.Get(rpcservertest.TenantHeader); tn {
		case "":
			return principal.Local, nil
		case "-":
			return principal.Principal{}, errors.New("no credentials")
		case "~": // authenticated, but with no tenant: the authz interceptor refuses it before the handler
			return principal.Principal{Subject: "s", Roles: []string{"admin"}}, nil
		default:
			return rpcservertest.TenantAuthenticator(r)
		}
	}
	hs := rpcservertest.Start(t, rpcserver.Config{}, auth, svc)
	if err := svc.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	h2c := rpcservertest.HTTPClient()
	conn := hs.GRPCConn(t)
	return map[string]client{
		"connect": connectClient{memoryv1connect.NewMemoryServiceClient(h2c, hs.URL)},
		"grpc":    grpcClient{memoryv1.NewMemoryServiceClient(conn)},
	}
}

// codeOf returns the code and message of a Connect or gRPC error.
func codeOf(err error) (connect.Code, string) {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code(), ce.Message()
	}
	st := status.Convert(err)
	return connect.Code(st.Code()), st.Message()
}

func sv(s string) *memoryv1.Value {
	return &memoryv1.Value{Kind: &memoryv1.Value_StringValue{StringValue: s}}
}

func TestRPC(t *testing.T) {
	t.Parallel()
	for name, c := range serve(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := withTenant(context.Background(), "tenant-"+name)
			testHappyPath(t, ctx, c)
			testBadInput(t, ctx, c)
		})
	}
}

func testHappyPath(t *testing.T, ctx context.Context, c client) {
	created, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "notes", Dimension: 64, Description: "d"}})
	if err != nil {
		t.Fatalf("CreateNamespace: %v", err)
	}
	if created.GetNamespace().GetCreateTime() == nil {
		t.Fatal("create_time not set")
	}
	want := &memoryv1.Namespace{
		Name: "notes", Dimension: 64, Metric: memoryv1.Metric_METRIC_COSINE, Description: "d",
		Embedder:   &memoryv1.Embedder{Provider: "local"},
		Index:      &memoryv1.IndexConfig{},
		CreateTime: created.GetNamespace().GetCreateTime(),
	}
	if diff := cmp.Diff(want, created.GetNamespace(), protocmp.Transform()); diff != "" {
		t.Errorf("CreateNamespace (-want +got):\n%s", diff)
	}
	if _, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "notes", Dimension: 64}}); err == nil {
		t.Error("duplicate CreateNamespace succeeded")
	} else if code, _ := codeOf(err); code != connect.CodeAlreadyExists {
		t.Errorf("duplicate CreateNamespace code = %v, want AlreadyExists", code)
	}

	vec := make([]float32, 64)
	vec[3] = 1
	up, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "notes", Records: []*memoryv1.Record{
		{Id: "cats", Text: "cats purr and sleep all day", Metadata: map[string]*memoryv1.Value{"kind": sv("pet")}},
		{Id: "stocks", Text: "the stock market fell sharply today", Metadata: map[string]*memoryv1.Value{"kind": sv("finance")}},
		{Text: "dogs bark at the mail carrier", Metadata: map[string]*memoryv1.Value{"kind": sv("pet")}, Ttl: durationpb.New(time.Hour)},
		{Id: "vec", Vector: vec},
	}})
	if err != nil {
		t.Fatalf("Upsert: %v", err)
	}
	if len(up.GetIds()) != 4 || up.GetIds()[0] != "cats" || up.GetIds()[2] == "" || up.GetIds()[3] != "vec" {
		t.Fatalf("Upsert ids = %v", up.GetIds())
	}

	got, err := c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "notes"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetNamespace().GetStats().GetRecordCount() != 4 {
		t.Errorf("stats = %v, want 4 records", got.GetNamespace().GetStats())
	}

	res, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "do cats sleep?"}, TopK: 2})
	if err != nil {
		t.Fatalf("Search(text): %v", err)
	}
	if len(res.GetHits()) != 2 || res.GetHits()[0].GetRecord().GetId() != "cats" {
		t.Errorf("Search(text) = %v, want cats first", res.GetHits())
	}
	res, err = c.Search(ctx, &memoryv1.SearchRequest{
		Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "market"}, Hybrid: true, TopK: 10,
		Filter: &memoryv1.Filter{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "kind", Op: &memoryv1.FieldCondition_Eq{Eq: &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: "finance"}}}}}},
	})
	if err != nil {
		t.Fatalf("Search(hybrid, filter): %v", err)
	}
	if len(res.GetHits()) != 1 || res.GetHits()[0].GetRecord().GetId() != "stocks" {
		t.Errorf("Search(hybrid, filter) = %v, want stocks only", res.GetHits())
	}
	res, err = c.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: vec}}, TopK: 1, IncludeVectors: true})
	if err != nil {
		t.Fatalf("Search(vector): %v", err)
	}
	wantHit := &memoryv1.Hit{Record: &memoryv1.Record{Id: "vec", Vector: vec, UpdateTime: res.GetHits()[0].GetRecord().GetUpdateTime()}, Score: 1}
	if diff := cmp.Diff(wantHit, res.GetHits()[0], protocmp.Transform()); diff != "" {
		t.Errorf("Search(vector) (-want +got):\n%s", diff)
	}

	g, err := c.Get(ctx, &memoryv1.GetRequest{Namespace: "notes", Ids: []string{"stocks", "nope"}})
	if err != nil {
		t.Fatal(err)
	}
	wantGet := &memoryv1.GetResponse{
		Records:    []*memoryv1.Record{{Id: "stocks", Text: "the stock market fell sharply today", Metadata: map[string]*memoryv1.Value{"kind": sv("finance")}, UpdateTime: g.GetRecords()[0].GetUpdateTime()}},
		MissingIds: []string{"nope"},
	}
	if diff := cmp.Diff(wantGet, g, protocmp.Transform()); diff != "" {
		t.Errorf("Get (-want +got):\n%s", diff)
	}

	del, err := c.Delete(ctx, &memoryv1.DeleteRequest{Namespace: "notes", Selector: &memoryv1.DeleteRequest_Filter{Filter: &memoryv1.Filter{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "kind", Op: &memoryv1.FieldCondition_Eq{Eq: &memoryv1.Scalar{Kind: &memoryv1.Scalar_StringValue{StringValue: "pet"}}}}}}}})
	if err != nil || del.GetDeletedCount() != 2 {
		t.Fatalf("Delete(filter) = %v, %v; want 2", del, err)
	}
	del, err = c.Delete(ctx, &memoryv1.DeleteRequest{Namespace: "notes", Selector: &memoryv1.DeleteRequest_Ids{Ids: &memoryv1.IdList{Ids: []string{"vec", "nope"}}}})
	if err != nil || del.GetDeletedCount() != 1 {
		t.Fatalf("Delete(ids) = %v, %v; want 1", del, err)
	}

	// Paging over three namespaces, one at a time.
	for _, n := range []string{"b-ns", "c-ns"} {
		if _, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: n, Dimension: 2, Metric: memoryv1.Metric_METRIC_L2}}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	tok := ""
	for range 5 {
		l, err := c.ListNamespaces(ctx, &memoryv1.ListNamespacesRequest{PageSize: 1, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range l.GetNamespaces() {
			names = append(names, n.GetName())
		}
		if tok = l.GetNextPageToken(); tok == "" {
			break
		}
	}
	if diff := cmp.Diff([]string{"b-ns", "c-ns", "notes"}, names); diff != "" {
		t.Errorf("ListNamespaces pages (-want +got):\n%s", diff)
	}
	if _, err := c.DeleteNamespace(ctx, &memoryv1.DeleteNamespaceRequest{Name: "c-ns"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "c-ns"}); err == nil {
		t.Error("GetNamespace after delete succeeded")
	} else if code, _ := codeOf(err); code != connect.CodeNotFound {
		t.Errorf("GetNamespace after delete: code %v, want NotFound", code)
	}
	// Another tenant sees nothing.
	other := withTenant(ctx, "someone-else")
	if l, err := c.ListNamespaces(other, &memoryv1.ListNamespacesRequest{}); err != nil || len(l.GetNamespaces()) != 0 {
		t.Errorf("other tenant lists %v, %v", l.GetNamespaces(), err)
	}
}

func testBadInput(t *testing.T, ctx context.Context, c client) {
	if _, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "bad", Dimension: 3}}); err != nil {
		t.Fatal(err)
	}
	good := &memoryv1.Record{Id: "good", Vector: []float32{1, 2, 3}}
	nan := float32(math.NaN())
	big := make([]*memoryv1.Record, 1001)
	for i := range big {
		big[i] = &memoryv1.Record{Id: fmt.Sprint("r", i), Vector: []float32{1, 2, 3}}
	}
	mixedIn := &memoryv1.Filter{Kind: &memoryv1.Filter_All{All: &memoryv1.FilterList{Filters: []*memoryv1.Filter{
		{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "a", Op: &memoryv1.FieldCondition_Exists{Exists: true}}}},
		{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "b", Op: &memoryv1.FieldCondition_In{In: &memoryv1.ScalarList{Values: []*memoryv1.Scalar{
			{Kind: &memoryv1.Scalar_StringValue{StringValue: "x"}}, {Kind: &memoryv1.Scalar_NumberValue{NumberValue: 1}},
		}}}}}},
	}}}}
	deep := &memoryv1.Filter{Kind: &memoryv1.Filter_Field{Field: &memoryv1.FieldCondition{Key: "a", Op: &memoryv1.FieldCondition_Exists{Exists: true}}}}
	for range 8 {
		deep = &memoryv1.Filter{Kind: &memoryv1.Filter_Not{Not: deep}}
	}
	tests := []struct {
		name     string
		call     func(ctx context.Context) error
		code     connect.Code
		contains string
	}{
		{"wrong dimension", func(ctx context.Context) error {
			_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "bad", Records: []*memoryv1.Record{good, {Id: "x", Vector: []float32{1, 2}}}})
			return err
		}, connect.CodeInvalidArgument, "records[1].vector"},
		{"nan in vector", func(ctx context.Context) error {
			_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "bad", Records: []*memoryv1.Record{good, {Id: "x", Vector: []float32{1, nan, 3}}}})
			return err
		}, connect.CodeInvalidArgument, "records[1].vector"},
		{"neither text nor vector", func(ctx context.Context) error {
			_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "bad", Records: []*memoryv1.Record{good, {Id: "x"}}})
			return err
		}, connect.CodeInvalidArgument, "records[1]"},
		{"oversize batch", func(ctx context.Context) error {
			_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "bad", Records: big})
			return err
		}, connect.CodeInvalidArgument, "records"},
		{"unknown namespace", func(ctx context.Context) error {
			_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "nope", Records: []*memoryv1.Record{good}})
			return err
		}, connect.CodeNotFound, "nope"},
		{"unknown namespace search", func(ctx context.Context) error {
			_, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "nope", Query: &memoryv1.SearchRequest_Text{Text: "x"}})
			return err
		}, connect.CodeNotFound, "nope"},
		{"filter value type mismatch", func(ctx context.Context) error {
			_, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "bad", Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: []float32{1, 2, 3}}}, Filter: mixedIn})
			return err
		}, connect.CodeInvalidArgument, "filter.all.filters[1].field.in.values[1]"},
		{"filter too deep", func(ctx context.Context) error {
			_, err := c.Delete(ctx, &memoryv1.DeleteRequest{Namespace: "bad", Selector: &memoryv1.DeleteRequest_Filter{Filter: deep}})
			return err
		}, connect.CodeInvalidArgument, "filter.not.not.not.not.not.not.not.not"},
		{"search vector dimension", func(ctx context.Context) error {
			_, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "bad", Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: []float32{1, 2}}}})
			return err
		}, connect.CodeInvalidArgument, "vector"},
		{"hybrid without text", func(ctx context.Context) error {
			_, err := c.Search(ctx, &memoryv1.SearchRequest{Namespace: "bad", Query: &memoryv1.SearchRequest_Vector{Vector: &memoryv1.Vector{Values: []float32{1, 2, 3}}}, Hybrid: true})
			return err
		}, connect.CodeInvalidArgument, "hybrid"},
		{"ttl and expire_time", func(ctx context.Context) error {
			_, err := c.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "bad", Records: []*memoryv1.Record{good, {Id: "x", Vector: []float32{1, 2, 3}, Ttl: durationpb.New(time.Hour), ExpireTime: created()}}})
			return err
		}, connect.CodeInvalidArgument, "records[1].ttl"},
		{"bad page token", func(ctx context.Context) error {
			_, err := c.ListNamespaces(ctx, &memoryv1.ListNamespacesRequest{PageToken: "garbage!"})
			return err
		}, connect.CodeInvalidArgument, "page_token"},
		{"unconfigured embedder", func(ctx context.Context) error {
			_, err := c.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "gem", Dimension: 3, Embedder: &memoryv1.Embedder{Provider: "gemini"}}})
			return err
		}, connect.CodeFailedPrecondition, "gemini"},
		{"no principal", func(ctx context.Context) error {
			_, err := c.Upsert(withTenant(ctx, "-"), &memoryv1.UpsertRequest{Namespace: "bad", Records: []*memoryv1.Record{good}})
			return err
		}, connect.CodeUnauthenticated, ""},
		{"principal without a tenant", func(ctx context.Context) error {
			_, err := c.ListNamespaces(withTenant(ctx, "~"), &memoryv1.ListNamespacesRequest{}) // a handler that ran would answer OK
			return err
		}, connect.CodeUnauthenticated, ""},
	}
	for _, tc := range tests {
		err := tc.call(ctx)
		if err == nil {
			t.Errorf("%s: succeeded, want %v", tc.name, tc.code)
			continue
		}
		code, msg := codeOf(err)
		if code != tc.code || !strings.Contains(msg, tc.contains) {
			t.Errorf("%s: %v %q, want %v naming %q", tc.name, code, msg, tc.code, tc.contains)
		}
	}
	// Nothing was written by any rejected call.
	ns, err := c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "bad"})
	if err != nil {
		t.Fatal(err)
	}
	if n := ns.GetNamespace().GetStats().GetRecordCount(); n != 0 {
		t.Errorf("rejected calls wrote %d records", n)
	}
	if _, err := c.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "gem"}); err == nil {
		t.Error("namespace with an unconfigured embedder was created")
	}
}

func created() *timestamppb.Timestamp { return timestamppb.New(time.Now().Add(time.Hour)) }
