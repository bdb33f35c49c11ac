package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// MCP tools: one tool of a Model Context Protocol server (streamable HTTP), reached through the address guard.
// A run opens at most one session per server URL, lists the tools when it starts, and closes its sessions when
// it ends.

const (
	defaultMCPTimeout  = 20 * time.Second
	defaultMCPMaxBytes = 64 << 10
)

// mcpName is the name the model sees for t.
func mcpName(t *agentv1.McpTool) string {
	if t.GetName() != "" {
		return t.GetName()
	}
	return t.GetTool()
}

// checkMCP checks an MCP tool at save time.
func checkMCP(t *agentv1.McpTool, path string) error {
	name := mcpName(t)
	if !webhookName.MatchString(name) {
		return &FieldError{Field: path + ".name", Reason: fmt.Sprintf("%q is not a valid tool name: set name", truncatePath(name))}
	}
	if builtinTool(name) {
		return &FieldError{Field: path + ".name", Reason: fmt.Sprintf("%q is a built-in tool's name", name)}
	}
	u, err := url.Parse(t.GetUrl())
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return &FieldError{Field: path + ".url", Reason: "must be an absolute http or https URL without user info"}
	}
	return nil
}

// mcpRun holds a run's MCP sessions and the tools the servers described. Safe for concurrent use.
type mcpRun struct {
	s *Server

	mu       sync.Mutex
	sessions map[string]*mcp.ClientSession // by URL
	tools    map[string]*mcp.Tool          // by the name the model sees
}

// session returns the run's session with the server at rawURL, connecting through the address guard.
func (r *mcpRun) session(ctx context.Context, rawURL string) (*mcp.ClientSession, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cs, ok := r.sessions[rawURL]; ok {
		return cs, nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("bad MCP server URL")
	}
	if err := r.s.fetchGuard.CheckURL(u); err != nil {
		return nil, fmt.Errorf("MCP server URL refused: %v", err)
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "loom-agent", Version: "1"}, nil)
	hc := &http.Client{Transport: r.s.fetchTransport(),
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: rawURL, HTTPClient: hc, MaxRetries: -1}, nil)
	if err != nil {
		return nil, fmt.Errorf("MCP server cannot be reached: %v", err)
	}
	if r.sessions == nil {
		r.sessions = map[string]*mcp.ClientSession{}
	}
	r.sessions[rawURL] = cs
	return cs, nil
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
		tools, ok := listed[m.GetUrl()]
		if !ok {
			var err error
			tools, err = r.list(ctx, m)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("MCP tool %s left out: %v", mcpName(m), err))
				listed[m.GetUrl()] = nil
				continue
			}
			listed[m.GetUrl()] = tools
		}
		found := false
		for _, tool := range tools {
			if tool.Name == m.GetTool() {
				r.mu.Lock()
				if r.tools == nil {
					r.tools = map[string]*mcp.Tool{}
				}
				r.tools[mcpName(m)] = tool
				r.mu.Unlock()
				found = true
				break
			}
		}
		if !found && tools != nil {
			warnings = append(warnings, fmt.Sprintf("MCP tool %s left out: the server has no tool %q", mcpName(m), truncatePath(m.GetTool())))
		}
	}
	return warnings
}

func (r *mcpRun) list(ctx context.Context, m *agentv1.McpTool) ([]*mcp.Tool, error) {
	ctx, cancel := context.WithTimeout(ctx, mcpTimeout(m))
	defer cancel()
	cs, err := r.session(ctx, m.GetUrl())
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
	if env.mcp.tool(mcpName(m)) == nil {
		return nil, errors.New("this MCP tool is not available in this run")
	}
	ctx, cancel := context.WithTimeout(ctx, mcpTimeout(m))
	defer cancel()
	cs, err := env.mcp.session(ctx, m.GetUrl())
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
