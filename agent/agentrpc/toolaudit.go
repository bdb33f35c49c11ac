package agentrpc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/loom-dev/loom/internal/audit"
	"github.com/loom-dev/loom/internal/principal"
)

// Audit rows of the calls an agent makes to the user's own endpoints (webhook and MCP tools): one
// internal/audit event per call, readable by the tenant's admins through AdminService.ListAuditEvents. An event
// names the tool kind as its procedure ("tool/webhook", "tool/mcp"), and carries in its resource the agent, the
// run, the tool, the endpoint's host (never its path or query, which may hold tokens), the duration and the
// bytes of the result; never arguments, results or secrets.

// auditTimeout bounds the write of one audit row; a failed write is logged and never fails the tool call.
const auditTimeout = 2 * time.Second

// Tool kinds, the audit events' procedures.
const (
	auditWebhook = "tool/webhook"
	auditMCP     = "tool/mcp"
)

// urlTarget is what an audit row says of an endpoint URL: its host, never its path or query.
func urlTarget(endpoint string) string {
	host := ""
	if u, err := url.Parse(endpoint); err == nil {
		host = u.Host
	}
	return "host=" + host
}

// auditTool records a call of the tool called name, of kind procedure, to target ("host=..." or "server=..."),
// that started at start and returned out or err.
func (s *Server) auditTool(ctx context.Context, env runEnv, procedure, name, target string, start time.Time, out map[string]any, err error) {
	if s.cfg.Audit == nil {
		return
	}
	size := 0
	if err == nil {
		if b, merr := json.Marshal(out); merr == nil {
			size = len(b)
		}
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	p, _ := principal.FromContext(ctx)
	e := audit.Event{Time: time.Now(), Tenant: env.tenant, Subject: p.Subject, Procedure: procedure, Result: result,
		Resource: fmt.Sprintf("agent=%s run=%s tool=%s %s duration_ms=%d bytes=%d", env.agent.GetName(), env.runID,
			name, target, time.Since(start).Milliseconds(), size)}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	if aerr := s.cfg.Audit.Append(actx, e); aerr != nil {
		s.logger.WarnContext(ctx, "agent: audit a tool call", "tool", name, "run", env.runID, "err", aerr)
	}
}
