package agentrpc_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc/codes"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// stdioEnv makes this test binary an MCP stdio server (the allow-listed command of TestMCPServerStdio).
const stdioEnv = "LOOM_TEST_MCP_STDIO"

func TestMain(m *testing.M) {
	if os.Getenv(stdioEnv) == "1" {
		srv := mcp.NewServer(&mcp.Implementation{Name: "stdio-tools", Version: "1"}, nil)
		mcp.AddTool(srv, &mcp.Tool{Name: "add", Description: "Add two integers."},
			func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
				// The sum, plus the size of the environment beyond the one variable allow-listed: 0 unless
				// the server's own environment leaked into the command.
				return nil, addOut{Sum: in.A + in.B + 1000*(len(os.Environ())-1)}, nil
			})
		if err := srv.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serverAgent is an agent whose adder tool is the add tool of the registered server.
func serverAgent(name, server string) *agentv1.Agent {
	return &agentv1.Agent{Name: name, Instructions: "x",
		Tools: []*agentv1.Tool{{Kind: &agentv1.Tool_Mcp{Mcp: &agentv1.McpTool{Server: server, Tool: "add", Name: "adder"}}}},
		Model: &agentv1.Model{Sim: &agentv1.SimScript{Turns: []*agentv1.SimTurn{{ToolCalls: []*agentv1.ToolCall{
			{Id: "c1", Name: "adder", Arguments: mustStruct(map[string]any{"a": 2, "b": 3})}}}}}}}
}

// TestMCPServerRegistry: an admin registers an HTTP MCP server with a secret header, which is never returned but
// is sent to the server; agents name the server; a deleted server leaves the tool out with a warning. Both
// clients.
func TestMCPServerRegistry(t *testing.T) {
	t.Parallel()
	hs, calls := mcpServer(t)
	var authorized atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer s3cr3t-token" {
			authorized.Add(1)
		}
		hs.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	h := newHarness(t, agentrpc.Config{})
	agentrpc.SetFetchPolicy(h.server, func(netip.Addr) error { return nil })
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		suffix := clientSuffix(t)
		name := "tools-" + suffix
		put, err := c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: name,
			Transport: &agentv1.McpServer_Url{Url: front.URL}, Headers: map[string]string{"Authorization": "Bearer s3cr3t-token"}}})
		if err != nil {
			t.Fatalf("PutMcpServer: %v", err)
		}
		if s := put.GetServer(); len(s.GetHeaders()) != 0 || !slices.Equal(s.GetHeaderNames(), []string{"Authorization"}) || s.GetUpdateTime() == nil {
			t.Fatalf("PutMcpServer = %v, want no header values, the header names and an update time", s)
		}
		// A Put without headers keeps them (write-only).
		if _, err := c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: name, Transport: &agentv1.McpServer_Url{Url: front.URL}}}); err != nil {
			t.Fatal(err)
		}
		list, err := c.ListMcpServers(ctx, &agentv1.ListMcpServersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(list.GetServers(), func(s *agentv1.McpServer) bool { return s.GetName() == name })
		if i < 0 || len(list.GetServers()[i].GetHeaders()) != 0 || !slices.Equal(list.GetServers()[i].GetHeaderNames(), []string{"Authorization"}) {
			t.Fatalf("ListMcpServers = %v, want %s with its header names only", list, name)
		}
		if strings.Contains(list.String(), "s3cr3t") {
			t.Fatalf("ListMcpServers leaks the header value: %v", list)
		}

		before, authBefore := calls.Load(), authorized.Load() // shared by both subtests: counts only grow
		create(t, ctx, c, serverAgent("adds-"+suffix, name))
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "adds-" + suffix, Input: "add"})
		if err != nil {
			t.Fatal(err)
		}
		res := resp.GetRun().GetSteps()[0].GetToolResults()[0]
		if res.GetResult().GetFields()["sum"].GetNumberValue() != 5 || calls.Load() <= before {
			t.Fatalf("adder through the registered server = %v (warnings %q)", res, resp.GetRun().GetWarnings())
		}
		if authorized.Load() == authBefore {
			t.Errorf("the registered header never reached the server")
		}

		if _, err := c.DeleteMcpServer(ctx, &agentv1.DeleteMcpServerRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		_, err = c.DeleteMcpServer(ctx, &agentv1.DeleteMcpServerRequest{Name: name})
		wantCode(t, err, codes.NotFound, "")
		resp, err = c.Run(ctx, &agentv1.RunRequest{Agent: "adds-" + suffix, Input: "add"})
		if err != nil {
			t.Fatal(err)
		}
		if w := strings.Join(resp.GetRun().GetWarnings(), "\n"); !strings.Contains(w, "is not registered") {
			t.Errorf("warnings after delete = %q, want the server not registered", w)
		}

		// Mistakes.
		_, err = c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: "x", Transport: &agentv1.McpServer_StdioCommand{StdioCommand: "rm"}}})
		wantCode(t, err, codes.InvalidArgument, "server.stdio_command")
		_, err = c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: "x", Transport: &agentv1.McpServer_Url{Url: "ftp://x"}}})
		wantCode(t, err, codes.InvalidArgument, "server.url")
		_, err = c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: "x", Transport: &agentv1.McpServer_Url{Url: front.URL},
			Headers: map[string]string{"Mcp-Session-Id": "x"}}})
		wantCode(t, err, codes.InvalidArgument, "server.headers")
		both := serverAgent("both-"+suffix, name)
		both.Tools[0].GetMcp().Url = front.URL
		_, err = c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: both})
		wantCode(t, err, codes.InvalidArgument, "agent.tools[0].mcp.server")
		neither := serverAgent("neither-"+suffix, "")
		_, err = c.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: neither})
		wantCode(t, err, codes.InvalidArgument, "agent.tools[0].mcp.url")
	})
}

// TestMCPServerStdio: a registered stdio server runs only as the operator's allow-listed command (this test
// binary, re-executed as an MCP server), with no environment but the one listed. Both clients.
func TestMCPServerStdio(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, agentrpc.Config{MCPStdio: map[string]agentrpc.MCPCommand{"adder": {Path: exe, Env: []string{stdioEnv + "=1"}}}})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		suffix := clientSuffix(t)
		if _, err := c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: "local-" + suffix,
			Transport: &agentv1.McpServer_StdioCommand{StdioCommand: "adder"}}}); err != nil {
			t.Fatalf("PutMcpServer: %v", err)
		}
		_, err := c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: "other",
			Transport: &agentv1.McpServer_StdioCommand{StdioCommand: "sh"}}})
		wantCode(t, err, codes.InvalidArgument, "server.stdio_command")
		// The default address policy refuses an internal URL when it is registered (and on every call).
		_, err = c.PutMcpServer(ctx, &agentv1.PutMcpServerRequest{Server: &agentv1.McpServer{Name: "internal",
			Transport: &agentv1.McpServer_Url{Url: "http://127.0.0.1:9/mcp"}}})
		wantCode(t, err, codes.InvalidArgument, "server.url")
		create(t, ctx, c, serverAgent("local-"+suffix, "local-"+suffix))
		resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "local-" + suffix, Input: "add"})
		if err != nil {
			t.Fatal(err)
		}
		res := resp.GetRun().GetSteps()[0].GetToolResults()[0]
		if res.GetResult().GetFields()["sum"].GetNumberValue() != 5 {
			t.Fatalf("adder over stdio = %v (warnings %q), want 5 (and an environment of one variable)", res, resp.GetRun().GetWarnings())
		}
	})
}

// TestMCPStdioConfig: the allow-list maps names to absolute paths; anything else fails New.
func TestMCPStdioConfig(t *testing.T) {
	t.Parallel()
	for name, cmds := range map[string]map[string]agentrpc.MCPCommand{
		"relative path": {"files": {Path: "mcp-files"}},
		"bad name":      {"Files/x": {Path: "/usr/bin/mcp-files"}},
	} {
		if err := (agentrpc.Config{MCPStdio: cmds}).Validate(); err == nil || !strings.Contains(err.Error(), "MCPStdio") {
			t.Errorf("%s: Validate = %v, want an error naming MCPStdio", name, err)
		}
	}
	if err := (agentrpc.Config{MCPStdio: map[string]agentrpc.MCPCommand{"files": {Path: "/usr/bin/mcp-files"}}}).Validate(); err != nil {
		t.Errorf("valid allow-list: %v", err)
	}
}
