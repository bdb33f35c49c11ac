package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/secret"
)

// The tenant's MCP server registry: servers an admin registers by name (streamable HTTP with secret headers, or
// an operator allow-listed stdio command), named by agents' MCP tools instead of a URL.

// maxMCPServers bounds a tenant's registry.
const maxMCPServers = 100

// MCPCommand is a stdio MCP server the operator allow-lists (Config.MCPStdio): the binary, its arguments, and
// its whole environment. Nothing of the Loom process's own environment is passed on, so its keys never reach
// the command.
type MCPCommand struct {
	// Path is the binary, an absolute path.
	Path string
	// Args are its arguments.
	Args []string
	// Env is its environment ("KEY=value"); empty means none at all.
	Env []string
}

// mcpCommandName is what an allow-listed command's name looks like.
var mcpCommandName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// validateStdio reports an allow-list entry that is not a name mapped to an absolute path.
func validateStdio(cmds map[string]MCPCommand) error {
	for name, c := range cmds {
		if !mcpCommandName.MatchString(name) {
			return fmt.Errorf("agent config: MCPStdio name %q: want lowercase letters, digits, _ and -", name)
		}
		if !filepath.IsAbs(c.Path) {
			return fmt.Errorf("agent config: MCPStdio[%s].Path %q is not an absolute path", name, c.Path)
		}
	}
	return nil
}

// reservedHeaders are the headers the MCP transport sets itself.
var reservedHeaders = []string{"Host", "Content-Length", "Content-Type", "Accept", "Mcp-Session-Id", "Mcp-Protocol-Version", "Connection", "Transfer-Encoding"}

// checkMCPServer checks a server to register; field is its path in the request ("server").
func (s *Server) checkMCPServer(m *agentv1.McpServer, field string) error {
	switch t := m.GetTransport().(type) {
	case *agentv1.McpServer_Url:
		u, err := url.Parse(t.Url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return &agent.FieldError{Field: field + ".url", Reason: "must be an absolute http or https URL without user info"}
		}
		if err := s.fetchGuard.CheckURL(u); err != nil { // early word; every call's every hop is checked again
			return &agent.FieldError{Field: field + ".url", Reason: fmt.Sprintf("refused by the address policy: %v", err)}
		}
	case *agentv1.McpServer_StdioCommand:
		if _, ok := s.cfg.MCPStdio[t.StdioCommand]; !ok {
			return &agent.FieldError{Field: field + ".stdio_command", Reason: fmt.Sprintf("%q is not an allow-listed stdio command of this server (the operator lists them with loom serve --mcp-stdio-allow)", t.StdioCommand)}
		}
		if len(m.GetHeaders()) > 0 {
			return &agent.FieldError{Field: field + ".headers", Reason: "headers are for url servers only"}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m.GetHeaders())) {
		if slices.ContainsFunc(reservedHeaders, func(r string) bool { return strings.EqualFold(r, k) }) {
			return &agent.FieldError{Field: fmt.Sprintf("%s.headers[%q]", field, k), Reason: "set by the MCP transport itself"}
		}
	}
	return nil
}

// redactMCPServer clears m's header values, which are never returned, and lists their names.
func redactMCPServer(m *agentv1.McpServer) *agentv1.McpServer {
	m.HeaderNames = slices.Sorted(maps.Keys(m.GetHeaders()))
	m.Headers = nil
	return m
}

// PutMcpServer implements agentv1connect.AgentServiceHandler.
func (s *Server) PutMcpServer(ctx context.Context, req *connect.Request[agentv1.PutMcpServerRequest]) (*connect.Response[agentv1.PutMcpServerResponse], error) {
	tenant := principal.TenantOf(ctx)
	m := req.Msg.GetServer()
	if err := s.checkMCPServer(m, "server"); err != nil {
		return nil, s.connectError(ctx, err)
	}
	prev, err := s.store.GetMCPServer(ctx, tenant, m.GetName())
	switch {
	case errors.Is(err, agent.ErrNotFound):
		all, err := s.store.ListMCPServers(ctx, tenant, maxMCPServers)
		if err != nil {
			return nil, s.connectError(ctx, err)
		}
		if len(all) >= maxMCPServers {
			return nil, s.connectError(ctx, fmt.Errorf("the tenant has %d MCP servers, the most it may register: %w", maxMCPServers, fault.ErrResourceExhausted))
		}
	case err != nil:
		return nil, s.connectError(ctx, err)
	case len(m.GetHeaders()) == 0 && !req.Msg.GetClearHeaders() && m.GetUrl() != "":
		m.Headers = prev.GetHeaders() // write-only: a Put need not repeat what it cannot read
	}
	stored, err := s.store.PutMCPServer(ctx, tenant, m)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.PutMcpServerResponse{Server: redactMCPServer(stored)}), nil
}

// ListMcpServers implements agentv1connect.AgentServiceHandler.
func (s *Server) ListMcpServers(ctx context.Context, _ *connect.Request[agentv1.ListMcpServersRequest]) (*connect.Response[agentv1.ListMcpServersResponse], error) {
	tenant := principal.TenantOf(ctx)
	all, err := s.store.ListMCPServers(ctx, tenant, maxMCPServers)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	for _, m := range all {
		redactMCPServer(m)
	}
	return connect.NewResponse(&agentv1.ListMcpServersResponse{Servers: all}), nil
}

// DeleteMcpServer implements agentv1connect.AgentServiceHandler.
func (s *Server) DeleteMcpServer(ctx context.Context, req *connect.Request[agentv1.DeleteMcpServerRequest]) (*connect.Response[agentv1.DeleteMcpServerResponse], error) {
	tenant := principal.TenantOf(ctx)
	if err := s.store.DeleteMCPServer(ctx, tenant, req.Msg.GetName()); err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.DeleteMcpServerResponse{}), nil
}

// headerTransport adds a registered server's headers to every request.
type headerTransport struct {
	base    http.RoundTripper
	headers map[string]secret.String
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.headers {
		r.Header.Set(k, v.Reveal())
	}
	return t.base.RoundTrip(r)
}
