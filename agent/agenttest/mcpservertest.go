package agenttest

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// runMCPServerTests is the contract of the Store's MCP server registry.
func runMCPServerTests(t *testing.T, newStore func(t *testing.T) agent.Store) {
	ctx := context.Background()
	t.Run("MCPServers", func(t *testing.T) {
		t.Parallel()
		s := newStore(t)
		docs := &agentv1.McpServer{Name: "docs", Transport: &agentv1.McpServer_Url{Url: "https://mcp.example.com/mcp"},
			Headers: map[string]string{"Authorization": "Bearer tok"}}
		put, err := s.PutMCPServer(ctx, "t1", docs)
		if err != nil {
			t.Fatalf("PutMCPServer: %v", err)
		}
		if put.GetUpdateTime() == nil || put.GetHeaders()["Authorization"] != "Bearer tok" {
			t.Fatalf("PutMCPServer = %v, want it stored with its headers and an update time", put)
		}
		if _, err := s.PutMCPServer(ctx, "t1", &agentv1.McpServer{Name: "local", Transport: &agentv1.McpServer_StdioCommand{StdioCommand: "files"}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetMCPServer(ctx, "t1", "docs")
		if err != nil {
			t.Fatalf("GetMCPServer: %v", err)
		}
		if diff := cmp.Diff(put, got, protocmp.Transform(), protocmp.IgnoreFields(&agentv1.McpServer{}, "update_time")); diff != "" {
			t.Errorf("GetMCPServer (-want +got):\n%s", diff)
		}
		if _, err := s.GetMCPServer(ctx, "t2", "docs"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("GetMCPServer other tenant: err = %v, want ErrNotFound", err)
		}
		// Put replaces.
		docs.Transport = &agentv1.McpServer_Url{Url: "https://mcp2.example.com/mcp"}
		if _, err := s.PutMCPServer(ctx, "t1", docs); err != nil {
			t.Fatal(err)
		}
		list, err := s.ListMCPServers(ctx, "t1", 10)
		if err != nil || len(list) != 2 || list[0].GetName() != "docs" || list[0].GetUrl() != "https://mcp2.example.com/mcp" || list[1].GetName() != "local" {
			t.Fatalf("ListMCPServers = %v, %v; want docs (replaced), local", list, err)
		}
		if list, _ := s.ListMCPServers(ctx, "t1", 1); len(list) != 1 {
			t.Errorf("ListMCPServers limit 1 = %d servers", len(list))
		}
		if err := s.DeleteMCPServer(ctx, "t1", "docs"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteMCPServer(ctx, "t1", "docs"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("DeleteMCPServer twice: err = %v, want ErrNotFound", err)
		}
		if _, err := s.GetMCPServer(ctx, "t1", "docs"); !errors.Is(err, agent.ErrNotFound) {
			t.Errorf("GetMCPServer after delete: err = %v, want ErrNotFound", err)
		}
	})
}
