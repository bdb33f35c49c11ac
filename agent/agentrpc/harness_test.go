package agentrpc_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/loom-dev/loom/agent"
	"github.com/loom-dev/loom/agent/agentrpc"
	"github.com/loom-dev/loom/agent/agenttest"
	"github.com/loom-dev/loom/agent/model"
	"github.com/loom-dev/loom/agent/model/gemini"
	"github.com/loom-dev/loom/agent/model/modeltest"
	"github.com/loom-dev/loom/agent/model/openai"
	"github.com/loom-dev/loom/agent/model/sim"
	"github.com/loom-dev/loom/agent/sqlstore"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// tenantHeader carries the test tenant; rpcservertest.TenantAuthenticator turns it into a principal.
const tenantHeader = rpcservertest.TenantHeader

type harness struct {
	server *agentrpc.Server
	memory *agenttest.Memory
	// clients are the same server reached by a Connect client and by a grpc-go client.
	clients map[string]agentv1.AgentServiceClient
	// addr is the server's "127.0.0.1:port"; url its base URL.
	addr, url string
}

func newHarness(t *testing.T, cfg agentrpc.Config) *harness {
	t.Helper()
	return newHarnessOn(t, sqldb.SQLite, cfg)
}

// newHarnessOn is newHarness with the store on the given dialect (Postgres skips without a test database).
func newHarnessOn(t *testing.T, dialect sqldb.Dialect, cfg agentrpc.Config) *harness {
	t.Helper()
	ctx := context.Background()
	store, err := sqlstore.New(ctx, sqldbtest.Open(t, dialect))
	if err != nil {
		t.Fatal(err)
	}
	return newHarnessWith(t, store, cfg)
}

// newHarnessWith is newHarness over a given store.
func newHarnessWith(t *testing.T, store agent.Store, cfg agentrpc.Config) *harness {
	t.Helper()
	if cfg.Models == nil {
		cfg.Models = testModels(model.Endpoint{}, model.Endpoint{})
	}
	mem := agenttest.NewMemory()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := agentrpc.New(logger, store, mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The real server (interceptors, limits) with the tenant from a test header, "t1" when absent.
	hs := rpcservertest.Start(t, rpcserver.Config{}, defaultTenantAuth, srv.Service())
	conn := hs.GRPCConn(t)
	cc := agentv1connect.NewAgentServiceClient(rpcservertest.HTTPClient(), hs.URL)
	return &harness{server: srv, memory: mem, addr: hs.Addr, url: hs.URL, clients: map[string]agentv1.AgentServiceClient{
		"connect": connectClient{cc},
		"grpc":    agentv1.NewAgentServiceClient(conn),
	}}
}

// grpcHarness is newHarness with the test's context and its grpc-go client, for tests that need only one client.
func grpcHarness(t *testing.T, cfg agentrpc.Config) (*harness, context.Context, agentv1.AgentServiceClient) {
	t.Helper()
	h := newHarness(t, cfg)
	return h, testCtx(t), h.clients["grpc"]
}

// writeOpenAIOK answers an OpenAI-compatible chat completion with the one text chunk "ok", as server-sent events.
func writeOpenAIOK(w http.ResponseWriter) {
	modeltest.SSE(w, `{"id":"1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ok"}}]}`, "[DONE]")
}

// defaultTenantAuth authenticates the tenant from the test header, "t1" when absent.
func defaultTenantAuth(r *http.Request) (principal.Principal, error) {
	if r.Header.Get(tenantHeader) == "" {
		r.Header.Set(tenantHeader, "t1")
	}
	return rpcservertest.TenantAuthenticator(r)
}

// testModels is a registry of every model provider the binary registers: the sim, and Gemini and
// OpenAI-compatible at the given endpoints.
func testModels(gem, oai model.Endpoint) *model.Registry {
	r := model.NewRegistry()
	r.Register("sim", sim.Provider(), model.Endpoint{})
	r.Register("gemini", gemini.Provider(), gem)
	r.Register("openai", openai.Provider(), oai)
	return r
}

// asTenant returns ctx whose calls run as tenant, for both client kinds.
func asTenant(ctx context.Context, tenant string) context.Context {
	ctx = metadata.AppendToOutgoingContext(ctx, tenantHeader, tenant)
	return context.WithValue(ctx, tenantKey{}, tenant)
}

type tenantKey struct{}

// connectClient adapts the Connect client to agentv1.AgentServiceClient, turning Connect errors into gRPC status
// errors (the codes are the same), so each test runs unchanged over both clients.
type connectClient struct {
	c agentv1connect.AgentServiceClient
}

func req[T any](ctx context.Context, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if tenant, ok := ctx.Value(tenantKey{}).(string); ok {
		r.Header().Set(tenantHeader, tenant)
	}
	return r
}

func grpcErr(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return status.Error(codes.Code(ce.Code()), ce.Message())
	}
	return err
}

func unary[Req, Resp any](ctx context.Context, in *Req, f func(context.Context, *connect.Request[Req]) (*connect.Response[Resp], error)) (*Resp, error) {
	resp, err := f(ctx, req(ctx, in))
	if err != nil {
		return nil, grpcErr(err)
	}
	return resp.Msg, nil
}

func (c connectClient) CreateAgent(ctx context.Context, in *agentv1.CreateAgentRequest, _ ...grpc.CallOption) (*agentv1.CreateAgentResponse, error) {
	return unary(ctx, in, c.c.CreateAgent)
}
func (c connectClient) GetAgent(ctx context.Context, in *agentv1.GetAgentRequest, _ ...grpc.CallOption) (*agentv1.GetAgentResponse, error) {
	return unary(ctx, in, c.c.GetAgent)
}
func (c connectClient) ListAgents(ctx context.Context, in *agentv1.ListAgentsRequest, _ ...grpc.CallOption) (*agentv1.ListAgentsResponse, error) {
	return unary(ctx, in, c.c.ListAgents)
}
func (c connectClient) UpdateAgent(ctx context.Context, in *agentv1.UpdateAgentRequest, _ ...grpc.CallOption) (*agentv1.UpdateAgentResponse, error) {
	return unary(ctx, in, c.c.UpdateAgent)
}
func (c connectClient) DeleteAgent(ctx context.Context, in *agentv1.DeleteAgentRequest, _ ...grpc.CallOption) (*agentv1.DeleteAgentResponse, error) {
	return unary(ctx, in, c.c.DeleteAgent)
}
func (c connectClient) Run(ctx context.Context, in *agentv1.RunRequest, _ ...grpc.CallOption) (*agentv1.RunResponse, error) {
	return unary(ctx, in, c.c.Run)
}
func (c connectClient) GetRun(ctx context.Context, in *agentv1.GetRunRequest, _ ...grpc.CallOption) (*agentv1.GetRunResponse, error) {
	return unary(ctx, in, c.c.GetRun)
}
func (c connectClient) ListRuns(ctx context.Context, in *agentv1.ListRunsRequest, _ ...grpc.CallOption) (*agentv1.ListRunsResponse, error) {
	return unary(ctx, in, c.c.ListRuns)
}
func (c connectClient) CancelRun(ctx context.Context, in *agentv1.CancelRunRequest, _ ...grpc.CallOption) (*agentv1.CancelRunResponse, error) {
	return unary(ctx, in, c.c.CancelRun)
}
func (c connectClient) DeleteRun(ctx context.Context, in *agentv1.DeleteRunRequest, _ ...grpc.CallOption) (*agentv1.DeleteRunResponse, error) {
	return unary(ctx, in, c.c.DeleteRun)
}
func (c connectClient) CreateVideo(ctx context.Context, in *agentv1.CreateVideoRequest, _ ...grpc.CallOption) (*agentv1.CreateVideoResponse, error) {
	return unary(ctx, in, c.c.CreateVideo)
}
func (c connectClient) GetVideo(ctx context.Context, in *agentv1.GetVideoRequest, _ ...grpc.CallOption) (*agentv1.GetVideoResponse, error) {
	return unary(ctx, in, c.c.GetVideo)
}
func (c connectClient) RunStream(ctx context.Context, in *agentv1.RunStreamRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[agentv1.RunStreamResponse], error) {
	s, err := c.c.RunStream(ctx, req(ctx, in))
	if err != nil {
		return nil, grpcErr(err)
	}
	return &connectStream[agentv1.RunStreamResponse]{s: s}, nil
}
func (c connectClient) SynthesizeSpeech(ctx context.Context, in *agentv1.SynthesizeSpeechRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[agentv1.SynthesizeSpeechResponse], error) {
	s, err := c.c.SynthesizeSpeech(ctx, req(ctx, in))
	if err != nil {
		return nil, grpcErr(err)
	}
	return &connectStream[agentv1.SynthesizeSpeechResponse]{s: s}, nil
}

// connectStream adapts a Connect server stream to grpc.ServerStreamingClient; only Recv is used.
type connectStream[T any] struct {
	grpc.ClientStream
	s *connect.ServerStreamForClient[T]
}

func (c *connectStream[T]) Recv() (*T, error) {
	if c.s.Receive() {
		return c.s.Msg(), nil
	}
	if err := c.s.Err(); err != nil {
		return nil, grpcErr(err)
	}
	return nil, io.EOF
}

// recvAll reads a stream to its end and returns the messages and the final error (nil on a clean end).
func recvAll[T any](s grpc.ServerStreamingClient[T], err error) ([]*T, error) {
	if err != nil {
		return nil, err
	}
	var out []*T
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
}

// wantCode fails t unless err has code.
func wantCode(t *testing.T, err error, code codes.Code, msgContains string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("err = %v, want code %v", err, code)
	}
	if msgContains != "" && !strings.Contains(status.Convert(err).Message(), msgContains) {
		t.Fatalf("err = %v, want message containing %q", err, msgContains)
	}
}

// eachNamedClient is eachClient handing f the subtest's context and name, prefix followed by clientSuffix: a
// name of an agent that only this subtest creates.
func (h *harness) eachNamedClient(t *testing.T, prefix string, f func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string)) {
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		f(t, testCtx(t), c, prefix+clientSuffix(t))
	})
}

// eachClient runs f once per client kind, in parallel subtests.
func (h *harness) eachClient(t *testing.T, f func(t *testing.T, c agentv1.AgentServiceClient)) {
	for name, c := range h.clients {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, c)
		})
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// clientSuffix is the last four letters of an eachClient subtest's name, lowercase ("nect" or "grpc"): a suffix
// that keeps apart the names the two subtests create.
func clientSuffix(t *testing.T) string {
	return strings.ToLower(t.Name()[len(t.Name())-4:])
}

func (c connectClient) GetUsage(ctx context.Context, in *agentv1.GetUsageRequest, _ ...grpc.CallOption) (*agentv1.GetUsageResponse, error) {
	return unary(ctx, in, c.c.GetUsage)
}
func (c connectClient) SetTenantBudget(ctx context.Context, in *agentv1.SetTenantBudgetRequest, _ ...grpc.CallOption) (*agentv1.SetTenantBudgetResponse, error) {
	return unary(ctx, in, c.c.SetTenantBudget)
}
func (c connectClient) GetTenantBudget(ctx context.Context, in *agentv1.GetTenantBudgetRequest, _ ...grpc.CallOption) (*agentv1.GetTenantBudgetResponse, error) {
	return unary(ctx, in, c.c.GetTenantBudget)
}
func (c connectClient) EstimateRun(ctx context.Context, in *agentv1.EstimateRunRequest, _ ...grpc.CallOption) (*agentv1.EstimateRunResponse, error) {
	return unary(ctx, in, c.c.EstimateRun)
}
func (c connectClient) SubmitToolResult(ctx context.Context, in *agentv1.SubmitToolResultRequest, _ ...grpc.CallOption) (*agentv1.SubmitToolResultResponse, error) {
	return unary(ctx, in, c.c.SubmitToolResult)
}
func (c connectClient) PutMcpServer(ctx context.Context, in *agentv1.PutMcpServerRequest, _ ...grpc.CallOption) (*agentv1.PutMcpServerResponse, error) {
	return unary(ctx, in, c.c.PutMcpServer)
}
func (c connectClient) ListMcpServers(ctx context.Context, in *agentv1.ListMcpServersRequest, _ ...grpc.CallOption) (*agentv1.ListMcpServersResponse, error) {
	return unary(ctx, in, c.c.ListMcpServers)
}
func (c connectClient) DeleteMcpServer(ctx context.Context, in *agentv1.DeleteMcpServerRequest, _ ...grpc.CallOption) (*agentv1.DeleteMcpServerResponse, error) {
	return unary(ctx, in, c.c.DeleteMcpServer)
}
