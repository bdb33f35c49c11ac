package agentrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/secret"
)

// MCP tools: one tool of a Model Context Protocol server, at a URL (streamable HTTP, reached through the address
// guard) or registered by the tenant (see mcpservers.go: streamable HTTP with its headers, or an allow-listed
// stdio command). A run opens at most one session per server, lists the tools when it starts, and closes its
// sessions (and stops its stdio commands) when it ends.

const (
	defaultMCPTimeout  = 20 * time.Second
	defaultMCPMaxBytes = 64 << 10
)

// mcpKey names the server of t within a run.
func mcpKey(t *agentv1.McpTool) string {
	if t.GetServer() != "" {
		return "server:" + t.GetServer()
	}
	return "url:" + t.GetUrl()
}

// mcpTarget is what an audit row says of t's server: its registered name, or the URL's host.
func mcpTarget(t *agentv1.McpTool) string {
	if t.GetServer() != "" {
		return "server=" + t.GetServer()
	}
	return urlTarget(t.GetUrl())
}

// mcpRun holds a run's MCP sessions and the tools the servers described. Safe for concurrent use.
type mcpRun struct {
	s      *Server
	tenant string // whose registered servers the run's tools name

	mu       sync.Mutex
	sessions map[string]*mcp.ClientSession // by mcpKey
	tools    map[string]*mcp.Tool          // by the name the model sees
}

// session returns the run's session with t's server, connecting through the address guard (or starting the
// allow-listed stdio command of a registered server).
func (r *mcpRun) session(ctx context.Context, t *agentv1.McpTool) (*mcp.ClientSession, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := mcpKey(t)
	if cs, ok := r.sessions[key]; ok {
		return cs, nil
	}
	transport, err := r.transport(ctx, t)
	if err != nil {
		return nil, err
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "loom-agent", Version: "1"}, nil)
	cs, err := client.Connect(ctx, transport, nil)
	if err != nil {
		return nil, fmt.Errorf("MCP server cannot be reached: %v", err)
	}
	if r.sessions == nil {
		r.sessions = map[string]*mcp.ClientSession{}
	}
	r.sessions[key] = cs
	return cs, nil
}

// transport is how the run reaches t's server.
func (r *mcpRun) transport(ctx context.Context, t *agentv1.McpTool) (mcp.Transport, error) {
	name := t.GetServer()
	if name == "" {
		return r.httpTransport(t.GetUrl(), nil)
	}
	srv, err := r.s.store.GetMCPServer(ctx, r.tenant, name)
	if errors.Is(err, agent.ErrNotFound) {
		return nil, fmt.Errorf("MCP server %q is not registered", name)
	}
	if err != nil {
		return nil, errors.New("the MCP server registry cannot be read")
	}
	if c := srv.GetStdioCommand(); c != "" {
		cmd, ok := r.s.cfg.MCPStdio[c]
		if !ok {
			return nil, fmt.Errorf("stdio command %q of MCP server %q is not allow-listed on this server", c, name)
		}
		ex := exec.Command(cmd.Path, cmd.Args...) // stopped by the session's Close
		ex.Env = append([]string{}, cmd.Env...)   // never the server's own environment
		return &mcp.CommandTransport{Command: ex}, nil
	}
	headers := map[string]secret.String{}
	for k, v := range srv.GetHeaders() {
		r.s.scrub.Add(v) // a server echoing a token in an error reaches the model and the run scrubbed
		headers[k] = secret.String(v)
	}
	return r.httpTransport(srv.GetUrl(), headers)
}

// httpTransport is streamable HTTP to rawURL through the address guard, without redirects, with headers.
func (r *mcpRun) httpTransport(rawURL string, headers map[string]secret.String) (mcp.Transport, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("bad MCP server URL")
	}
	if err := r.s.fetchGuard.CheckURL(u); err != nil {
		return nil, fmt.Errorf("MCP server URL refused: %v", err)
	}
	var rt http.RoundTripper = r.s.fetchTransport()
	if len(headers) > 0 {
		rt = headerTransport{base: rt, headers: headers}
	}
	hc := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &mcp.StreamableClientTransport{Endpoint: rawURL, HTTPClient: hc, MaxRetries: -1}, nil
}

// describe lists the tools of every MCP server a uses, and keeps the ones a names. It returns a warning per tool
// left out (server unreachable, tool missing).
func (r *mcpRun) describe(ctx context.Context, a *agentv1.Agent) []string {
	var warnings []string
	listed := map[string][]*mcp.Tool{}
	for _, t := range a.GetTools() {
		m := t.GetMcp()
		if m == nil {
			continue
		}
		tools, ok := listed[mcpKey(m)]
		if !ok {
			var err error
			tools, err = r.list(ctx, m)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("MCP tool %s left out: %v", agent.MCPName(m), err))
				listed[mcpKey(m)] = nil
				continue
			}
			listed[mcpKey(m)] = tools
		}
		found := false
		for _, tool := range tools {
			if tool.Name == m.GetTool() {
				r.mu.Lock()
				if r.tools == nil {
					r.tools = map[string]*mcp.Tool{}
				}
				r.tools[agent.MCPName(m)] = tool
				r.mu.Unlock()
				found = true
				break
			}
		}
		if !found && tools != nil {
			warnings = append(warnings, fmt.Sprintf("MCP tool %s left out: the server has no tool %q", agent.MCPName(m), agent.TruncatePath(m.GetTool())))
		}
	}
	return warnings
}

func (r *mcpRun) list(ctx context.Context, m *agentv1.McpTool) ([]*mcp.Tool, error) {
	ctx, cancel := context.WithTimeout(ctx, mcpTimeout(m))
	defer cancel()
	cs, err := r.session(ctx, m)
	if err != nil {
		return nil, err
	}
	var out []*mcp.Tool
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			return nil, fmt.Errorf("tools/list failed: %v", err)
		}
		out = append(out, tool)
		if len(out) > 1000 {
			break
		}
	}
	return out, nil
}

// tool returns what the server said of the tool the model calls name, or nil when it was left out.
func (r *mcpRun) tool(name string) *mcp.Tool {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tools[name]
}

// close ends the run's sessions.
func (r *mcpRun) close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cs := range r.sessions {
		_ = cs.Close()
	}
	r.sessions = nil
}

func mcpTimeout(m *agentv1.McpTool) time.Duration {
	if d := m.GetTimeout().AsDuration(); d > 0 {
		return d
	}
	return defaultMCPTimeout
}

// mcpSchema is the input schema the server gave for tool, as a JSON Schema object.
func mcpSchema(tool *mcp.Tool) map[string]any {
	if tool == nil {
		return map[string]any{"type": "object"}
	}
	b, err := json.Marshal(tool.InputSchema)
	var m map[string]any
	if err != nil || json.Unmarshal(b, &m) != nil || m == nil {
		return map[string]any{"type": "object"}
	}
	return m
}

// toolMCP calls the MCP tool m with args and returns its result: the structured content when it is an object,
// else {"content": the text parts joined}.
func (s *Server) toolMCP(ctx context.Context, env runEnv, m *agentv1.McpTool, args map[string]any) (map[string]any, error) {
	if env.mcp.tool(agent.MCPName(m)) == nil {
		return nil, errors.New("this MCP tool is not available in this run")
	}
	ctx, cancel := context.WithTimeout(ctx, mcpTimeout(m))
	defer cancel()
	cs, err := env.mcp.session(ctx, m)
	if err != nil {
		return nil, err
	}
	if args == nil {
		args = map[string]any{}
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: m.GetTool(), Arguments: args})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("MCP tool did not answer within %v", mcpTimeout(m))
		}
		return nil, fmt.Errorf("MCP call failed: %v", err)
	}
	var texts []string
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			texts = append(texts, t.Text)
		}
	}
	if res.IsError {
		return nil, fmt.Errorf("MCP tool failed: %s", truncateBytes(strings.Join(texts, "\n"), 2048))
	}
	out := map[string]any{}
	if obj, ok := res.StructuredContent.(map[string]any); ok {
		out = obj
	} else if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		if json.Unmarshal(b, &out) != nil || len(out) == 0 {
			out = map[string]any{"content": strings.Join(texts, "\n")}
		}
	} else {
		out["content"] = strings.Join(texts, "\n")
	}
	limit := int(m.GetMaxResultBytes())
	if limit <= 0 {
		limit = defaultMCPMaxBytes
	}
	if b, err := json.Marshal(out); err != nil || len(b) > limit {
		return nil, fmt.Errorf("MCP result larger than %d bytes", limit)
	}
	return out, nil
}
