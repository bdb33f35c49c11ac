package agentrpc_test

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/audit/auditsql"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// TestToolAudit: every webhook and MCP tool call leaves one audit row (the trail AdminService.ListAuditEvents
// reads) with the agent, run, tool, host, outcome, duration and size, and none of the arguments, results or
// secrets. Both clients.
func TestToolAudit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	trail, err := auditsql.Open(ctx, sqldbtest.Open(t, sqldb.SQLite))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, agentrpc.Config{Audit: trail})
	agentrpc.SetFetchPolicy(h.server, func(netip.Addr) error { return nil })
	hooks := httptest.NewServer(&receiver{})
	t.Cleanup(hooks.Close)
	mcpSrv, _ := mcpServer(t)
	for _, client := range []string{"connect", "grpc"} {
		t.Run(client, func(t *testing.T) {
			c := h.clients[client]
			ctx := testCtx(t)
			tenant := "audit-" + client
			ctx = asTenant(ctx, tenant)
			a := hookAgent("auditee", hooks.URL+"/ok?token=s3cr3t", map[string]any{"city": "Oslo"})
			a.Tools = append(a.Tools,
				&agentv1.Tool{Kind: &agentv1.Tool_Webhook{Webhook: &agentv1.WebhookTool{Name: "broken", Url: hooks.URL + "/fail", SigningSecret: hookSecret}}},
				&agentv1.Tool{Kind: &agentv1.Tool_Mcp{Mcp: &agentv1.McpTool{Url: mcpSrv.URL, Tool: "add", Name: "adder"}}})
			a.Model.Sim.Turns[0].ToolCalls = append(a.Model.Sim.Turns[0].ToolCalls,
				&agentv1.ToolCall{Id: "c2", Name: "broken", Arguments: mustStruct(map[string]any{})},
				&agentv1.ToolCall{Id: "c3", Name: "adder", Arguments: mustStruct(map[string]any{"a": 20, "b": 22})})
			create(t, ctx, c, a)
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: "auditee", Input: "go"})
			if err != nil {
				t.Fatal(err)
			}
			events, _, err := trail.List(ctx, tenant, 10, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(events) != 3 {
				t.Fatalf("audit events = %+v, want 3 (weather, broken, adder)", events)
			}
			u, _ := url.Parse(hooks.URL)
			m, _ := url.Parse(mcpSrv.URL)
			want := map[string]struct{ procedure, result, host string }{
				"weather": {"tool/webhook", "ok", u.Host}, "broken": {"tool/webhook", "error", u.Host}, "adder": {"tool/mcp", "ok", m.Host},
			}
			for _, e := range events {
				_, rest, _ := strings.Cut(e.Resource, "tool=")
				tool, _, _ := strings.Cut(rest, " ")
				w, ok := want[tool]
				if !ok || e.Procedure != w.procedure || e.Result != w.result || e.Tenant != tenant ||
					!strings.Contains(e.Resource, "agent=auditee run="+resp.GetRun().GetId()) ||
					!strings.Contains(e.Resource, "host="+w.host+" ") || !strings.Contains(e.Resource, "duration_ms=") {
					t.Errorf("audit event %+v, want %+v for run %s", e, w, resp.GetRun().GetId())
				}
				for _, leak := range []string{"s3cr3t", hookSecret, "Oslo", "token", "sum"} {
					if strings.Contains(e.Resource, leak) {
						t.Errorf("audit event %+v carries %q", e, leak)
					}
				}
				if tool == "adder" && strings.Contains(e.Resource, "bytes=0") {
					t.Errorf("audit event %+v, want the result's size", e)
				}
			}
		})
	}
}
