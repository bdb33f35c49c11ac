package mcpserver_test

import (
	"context"
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/mcpserver"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// searcher answers every Search with one hit, at once: the benchmark measures the path, not a store.
type searcher struct {
	memoryv1connect.UnimplementedMemoryServiceHandler
}

func (searcher) Search(context.Context, *connect.Request[memoryv1.SearchRequest]) (*connect.Response[memoryv1.SearchResponse], error) {
	return connect.NewResponse(&memoryv1.SearchResponse{Hits: []*memoryv1.Hit{{Record: &memoryv1.Record{Id: "n1", Text: "the deploy window is Tuesday"}, Score: 0.9}}}), nil
}

func writerAuth(*http.Request) (principal.Principal, error) {
	return principal.Principal{Tenant: "acme", Subject: "bench", Roles: []string{"writer"}}, nil
}

// BenchmarkMCPSearch alternates memory search as an MCP tool call (the SDK's client, over /mcp) and as the same
// RPC from a Connect client, against one server, and reports both p50s and the ratio: what the MCP layer adds.
func BenchmarkMCPSearch(b *testing.B) {
	h := mcpserver.New(mcpserver.Config{})
	srv := rpcservertest.Start(b, rpcserver.Config{MCP: h}, writerAuth, rpcserver.Service{Name: memoryv1connect.MemoryServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(searcher{}, o...)
		}})
	h.SetDispatch(srv.Dispatcher())
	ctx := context.Background()
	session, err := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: srv.URL + mcpserver.Path, MaxRetries: -1}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer session.Close()
	direct := memoryv1connect.NewMemoryServiceClient(rpcservertest.HTTPClient(), srv.URL)
	calls := [2]func() error{
		func() error {
			_, err := direct.Search(ctx, connect.NewRequest(&memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "deploy"}, TopK: 10}))
			return err
		},
		func() error {
			res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: "memory_search", Arguments: map[string]any{"namespace": "notes", "query": "deploy"}})
			if err == nil && res.IsError {
				b.Fatalf("tool error: %v", res.Content)
			}
			return err
		},
	}
	rpcservertest.CompareP50(b, 200, [2]string{"rpc", "mcp"}, calls)
}
