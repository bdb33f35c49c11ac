package main

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc/metadata"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// bearer adds an Authorization header to every request of an MCP client.
type bearer struct {
	key  string
	base http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.base.RoundTrip(r)
}

// mcpSession connects the MCP SDK's own client to loom's /mcp endpoint with key ("" sends no credentials).
func mcpSession(ctx context.Context, t *testing.T, addr, key string) (*mcp.ClientSession, error) {
	t.Helper()
	hc := &http.Client{Transport: http.DefaultTransport}
	if key != "" {
		hc.Transport = bearer{key: key, base: http.DefaultTransport}
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "loom-test", Version: "1"}, nil)
	return c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: "http://" + addr + "/mcp", HTTPClient: hc, MaxRetries: -1}, nil)
}

func callText(t *testing.T, res *mcp.CallToolResult) string {
	t.Helper()
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// TestMCPServer drives Loom's MCP endpoint with the SDK's client against `loom serve --auth required`: tools
// are listed by role, memory saved through MCP is found by search (and through gRPC), an agent runs, a workflow
// starts and is read back, a reader's write is refused by the RPC's own role check, another tenant sees
// nothing, and a call without credentials never reaches the tools.
func TestMCPServer(t *testing.T) {
	setServiceTokenKey(t)
	dataDir, keys := keyDir(t, "acme:writer", "acme:reader", "globex:writer")
	writer, reader, other := keys[0], keys[1], keys[2]
	p := startLoomIn(t, dataDir, "--auth", "required")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Set up with gRPC: a namespace, an agent and a blueprint of tenant acme.
	conn := dialGRPC(t, p.addr)
	gctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+writer)
	mem := memoryv1.NewMemoryServiceClient(conn)
	if _, err := mem.CreateNamespace(gctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "notes", Dimension: 64}}); err != nil {
		t.Fatal(err)
	}
	if _, err := agentv1.NewAgentServiceClient(conn).CreateAgent(gctx, &agentv1.CreateAgentRequest{Agent: &agentv1.Agent{Name: "bot", Instructions: "Answer briefly."}}); err != nil {
		t.Fatal(err)
	}
	bp := &orchestratorv1.Blueprint{Name: "ask", Steps: []*orchestratorv1.Step{{Id: "answer", Kind: &orchestratorv1.Step_Agent{Agent: &orchestratorv1.AgentStep{Agent: "bot", Input: "'hello'"}}}}}
	if _, err := orchestratorv1.NewOrchestratorServiceClient(conn).CreateBlueprint(gctx, &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Blueprint{Blueprint: bp}}}); err != nil {
		t.Fatal(err)
	}

	// No credentials: refused before any MCP message is handled.
	if s, err := mcpSession(ctx, t, p.addr, ""); err == nil {
		s.Close()
		t.Fatal("an MCP session without credentials was accepted")
	} else if !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Logf("refused as: %v", err)
	}

	ws, err := mcpSession(ctx, t, p.addr, writer)
	if err != nil {
		t.Fatalf("connect as writer: %v", err)
	}
	defer ws.Close()
	names := func(s *mcp.ClientSession) []string {
		t.Helper()
		res, err := s.ListTools(ctx, nil)
		if err != nil {
			t.Fatalf("list tools: %v", err)
		}
		var out []string
		for _, tool := range res.Tools {
			out = append(out, tool.Name)
			if tool.InputSchema == nil {
				t.Errorf("tool %s has no input schema", tool.Name)
			}
		}
		slices.Sort(out)
		return out
	}
	if got, want := names(ws), []string{"get_workflow_run", "memory_save", "memory_search", "run_agent", "start_workflow"}; !slices.Equal(got, want) {
		t.Errorf("writer's tools = %v, want %v", got, want)
	}
	call := func(s *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
		t.Helper()
		res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return res
	}

	saved := call(ws, "memory_save", map[string]any{"namespace": "notes", "id": "n1", "text": "the deploy window is Tuesday at noon", "metadata": map[string]any{"team": "ops", "prio": 2, "tags": []any{"deploy", "calendar"}}})
	if saved.IsError {
		t.Fatalf("memory_save: %s", callText(t, saved))
	}
	call(ws, "memory_save", map[string]any{"namespace": "notes", "id": "n2", "text": "lunch is served in the atrium"})
	found := call(ws, "memory_search", map[string]any{"namespace": "notes", "query": "when is the deploy window", "top_k": 1})
	if found.IsError || !strings.Contains(callText(t, found), `"n1"`) {
		t.Fatalf("memory_search: %s", callText(t, found))
	}
	if sc, ok := found.StructuredContent.(map[string]any); !ok || sc["hits"] == nil {
		t.Errorf("memory_search structured content = %v", found.StructuredContent)
	}
	filtered := call(ws, "memory_search", map[string]any{"namespace": "notes", "query": "deploy", "filter": map[string]any{"field": map[string]any{"key": "team", "eq": map[string]any{"string_value": "nobody"}}}})
	if filtered.IsError || strings.Contains(callText(t, filtered), `"n1"`) {
		t.Errorf("memory_search with a filter that matches nothing: %s", callText(t, filtered))
	}
	// What MCP saved is a real record: gRPC reads it, metadata converted.
	got, err := mem.Get(gctx, &memoryv1.GetRequest{Namespace: "notes", Ids: []string{"n1"}})
	if err != nil || len(got.GetRecords()) != 1 || got.GetRecords()[0].GetMetadata()["team"].GetStringValue() != "ops" || len(got.GetRecords()[0].GetMetadata()["tags"].GetListValue().GetValues()) != 2 {
		t.Fatalf("Get n1 over gRPC: %v, %v", got, err)
	}

	ran := call(ws, "run_agent", map[string]any{"agent": "bot", "input": "what is Loom?"})
	var run struct {
		Run struct {
			ID     string `json:"id"`
			State  string `json:"state"`
			Output string `json:"output"`
		} `json:"run"`
	}
	if ran.IsError || json.Unmarshal([]byte(callText(t, ran)), &run) != nil || run.Run.State != "RUN_STATE_SUCCEEDED" || run.Run.Output == "" {
		t.Fatalf("run_agent: %s", callText(t, ran))
	}

	started := call(ws, "start_workflow", map[string]any{"blueprint": "ask"})
	var wf struct {
		Run struct {
			ID string `json:"id"`
		} `json:"run"`
	}
	if started.IsError || json.Unmarshal([]byte(callText(t, started)), &wf) != nil || wf.Run.ID == "" {
		t.Fatalf("start_workflow: %s", callText(t, started))
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		res := call(ws, "get_workflow_run", map[string]any{"id": wf.Run.ID})
		if res.IsError {
			t.Fatalf("get_workflow_run: %s", callText(t, res))
		}
		if strings.Contains(callText(t, res), "SUCCEEDED\"") && strings.Contains(callText(t, res), `"state":"RUN_STATE_SUCCEEDED"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workflow run did not finish: %s", callText(t, res))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Bad arguments come back as a tool error naming the field, not a protocol failure.
	bad := call(ws, "memory_search", map[string]any{"namespace": "Not A Name", "query": "x"})
	if !bad.IsError || !strings.Contains(callText(t, bad), "namespace") || !strings.Contains(callText(t, bad), "invalid_argument") {
		t.Errorf("bad namespace: %s", callText(t, bad))
	}

	// A reader is listed only what its role allows, and the RPC itself refuses the rest.
	rs, err := mcpSession(ctx, t, p.addr, reader)
	if err != nil {
		t.Fatalf("connect as reader: %v", err)
	}
	defer rs.Close()
	if got, want := names(rs), []string{"get_workflow_run", "memory_search"}; !slices.Equal(got, want) {
		t.Errorf("reader's tools = %v, want %v", got, want)
	}
	if res, err := rs.CallTool(ctx, &mcp.CallToolParams{Name: "memory_save", Arguments: map[string]any{"namespace": "notes", "text": "x"}}); err == nil && !res.IsError {
		t.Errorf("a reader saved memory through MCP: %s", callText(t, res))
	}

	// Another tenant sees none of acme's memory or runs.
	os, err := mcpSession(ctx, t, p.addr, other)
	if err != nil {
		t.Fatalf("connect as another tenant: %v", err)
	}
	defer os.Close()
	if res := call(os, "memory_search", map[string]any{"namespace": "notes", "query": "deploy"}); !res.IsError || !strings.Contains(callText(t, res), "not_found") {
		t.Errorf("other tenant's search of acme's namespace: %s", callText(t, res))
	}
	if res := call(os, "get_workflow_run", map[string]any{"id": wf.Run.ID}); !res.IsError || strings.Contains(callText(t, res), "answer") {
		t.Errorf("other tenant read acme's workflow run: %s", callText(t, res))
	}
}
