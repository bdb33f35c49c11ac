package agentrpc_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

type addIn struct {
	A int `json:"a" jsonschema:"first addend"`
	B int `json:"b" jsonschema:"second addend"`
}

type addOut struct {
	Sum int `json:"sum"`
}

// mcpServer is a real MCP server (the official SDK, streamable HTTP) with tools add and fail, counting calls.
func mcpServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var calls atomic.Int64
	srv := mcp.NewServer(&mcp.Implementation{Name: "test-tools", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "add", Description: "Add two integers."},
		func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
			calls.Add(1)
			return nil, addOut{Sum: in.A + in.B}, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "fail", Description: "Always fails."},
		func(_ context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			calls.Add(1)
			return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "the tool broke"}}}, nil, nil
		})
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(hs.Close)
	return hs, &calls
}

func mcpAgent(name, url string, calls ...*agentv1.ToolCall) *agentv1.Agent {
	tool := func(tool, as string) *agentv1.Tool {
		return &agentv1.Tool{Kind: &agentv1.Tool_Mcp{Mcp: &agentv1.McpTool{Url: url, Tool: tool, Name: as}}}
	}
	return &agentv1.Agent{Name: name, Instructions: "x",
		Tools: []*agentv1.Tool{tool("add", "adder"), tool("fail", ""), tool("missing", "nothere")},
		Model: &agentv1.Model{Sim: &agentv1.SimScript{Turns: []*agentv1.SimTurn{{ToolCalls: calls}}}}}
}

// TestMCPTool: an agent calls tools of a real MCP server built with the official SDK. The schema comes from the
// server and is enforced before the call; results come back structured; a tool error is told to the model; a
// tool the server lacks is left out with a warning; under the default address policy a server on loopback is
// refused before any call. Both clients.
func TestMCPTool(t *testing.T) {
	t.Parallel()
	for _, client := range []string{"connect", "grpc"} {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			hs, calls := mcpServer(t)
			h := newHarness(t, agentrpc.Config{})
			c := h.clients[client]
			ctx := testCtx(t)
			call := func(id, name string, args map[string]any) *agentv1.ToolCall {
				return &agentv1.ToolCall{Id: id, Name: name, Arguments: mustStruct(args)}
			}
			// Default policy: loopback refused; every MCP tool is left out and no call reaches the server.
			create(t, ctx, c, mcpAgent("guarded", hs.URL, call("c1", "adder", map[string]any{"a": 1, "b": 2})))
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "guarded", Input: "add"})
			if err != nil {
				t.Fatal(err)
			}
			res := resp.GetRun().GetSteps()[0].GetToolResults()[0]
			if !strings.Contains(strings.Join(resp.GetRun().GetWarnings(), "\n"), "refused") || res.GetError() == "" || calls.Load() != 0 {
				t.Errorf("guarded: warnings %q, result %v, %d server calls; want refused, no call", resp.GetRun().GetWarnings(), res, calls.Load())
			}

			agentrpc.SetFetchPolicy(h.server, func(netip.Addr) error { return nil })
			create(t, ctx, c, mcpAgent("mathy", hs.URL,
				call("c1", "adder", map[string]any{"a": 2, "b": 3}),
				call("c2", "adder", map[string]any{"a": "two", "b": 3}),
				call("c3", "fail", map[string]any{}),
				call("c4", "nothere", map[string]any{})))
			start := time.Now()
			resp, err = c.Run(ctx, &agentv1.RunRequest{Agent: "mathy", Input: "add"})
			elapsed := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			run := resp.GetRun()
			results := run.GetSteps()[0].GetToolResults()
			if got := results[0].GetResult().GetFields()["sum"].GetNumberValue(); got != 5 || results[0].GetError() != "" {
				t.Errorf("adder(2, 3) = %v", results[0])
			}
			if !strings.Contains(results[1].GetError(), "invalid arguments: arguments.a: want integer") {
				t.Errorf("adder(\"two\", 3) = %v, want the server's schema enforced", results[1])
			}
			if !strings.Contains(results[2].GetError(), "MCP tool failed: the tool broke") {
				t.Errorf("fail = %v", results[2])
			}
			if !strings.Contains(results[3].GetError(), "not available") ||
				!strings.Contains(strings.Join(run.GetWarnings(), "\n"), `the server has no tool "missing"`) {
				t.Errorf("nothere = %v, warnings %q", results[3], run.GetWarnings())
			}
			if calls.Load() != 2 {
				t.Errorf("server calls = %d, want 2 (add, fail)", calls.Load())
			}

			// The same call directly with the SDK, for the overhead figure.
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "direct", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: hs.URL}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			dstart := time.Now()
			if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]any{"a": 2, "b": 3}}); err != nil {
				t.Fatal(err)
			}
			t.Logf("MCP: run with 4 tool calls (connect, tools/list, 2 server calls) %v; one direct SDK call on an open session %v", elapsed, time.Since(dstart))
		})
	}
}
