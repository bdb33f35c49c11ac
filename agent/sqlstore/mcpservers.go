package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// PutMCPServer implements agent.Store.
func (s *Store) PutMCPServer(ctx context.Context, tenant string, m *agentv1.McpServer) (*agentv1.McpServer, error) {
	c := proto.CloneOf(m)
	c.HeaderNames, c.UpdateTime = nil, nil
	spec, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("put mcp server: %w", err)
	}
	now := time.Now().UTC()
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO loom.mcp_servers (tenant, name, spec, update_time) VALUES (?, ?, ?, ?)
		ON CONFLICT (tenant, name) DO UPDATE SET spec = excluded.spec, update_time = excluded.update_time`),
		tenant, m.GetName(), spec, now.UnixNano()); err != nil {
		return nil, fmt.Errorf("put mcp server: %w", err)
	}
	c.UpdateTime = timestamppb.New(now)
	return c, nil
}

// GetMCPServer implements agent.Store.
func (s *Store) GetMCPServer(ctx context.Context, tenant, name string) (*agentv1.McpServer, error) {
	var (
		spec []byte
		ut   int64
	)
	err := s.db.QueryRowContext(ctx, s.q("SELECT spec, update_time FROM loom.mcp_servers WHERE tenant = ? AND name = ?"),
		tenant, name).Scan(&spec, &ut)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("MCP server %q: %w", name, agent.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get mcp server: %w", err)
	}
	return decodeMCPServer(spec, ut)
}

// ListMCPServers implements agent.Store.
func (s *Store) ListMCPServers(ctx context.Context, tenant string, limit int) ([]*agentv1.McpServer, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT spec, update_time FROM loom.mcp_servers WHERE tenant = ? ORDER BY name LIMIT ?"), tenant, limit)
	if err != nil {
		return nil, fmt.Errorf("list mcp servers: %w", err)
	}
	defer rows.Close()
	var out []*agentv1.McpServer
	for rows.Next() {
		var (
			spec []byte
			ut   int64
		)
		if err := rows.Scan(&spec, &ut); err != nil {
			return nil, fmt.Errorf("list mcp servers: %w", err)
		}
		m, err := decodeMCPServer(spec, ut)
		if err != nil {
			return nil, fmt.Errorf("list mcp servers: %w", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list mcp servers: %w", err)
	}
	return out, nil
}

// DeleteMCPServer implements agent.Store.
func (s *Store) DeleteMCPServer(ctx context.Context, tenant, name string) error {
	res, err := s.db.ExecContext(ctx, s.q("DELETE FROM loom.mcp_servers WHERE tenant = ? AND name = ?"), tenant, name)
	if err != nil {
		return fmt.Errorf("delete mcp server: %w", err)
	}
	return deletedOne(res, "delete mcp server", fmt.Sprintf("MCP server %q", name))
}

func decodeMCPServer(spec []byte, ut int64) (*agentv1.McpServer, error) {
	var m agentv1.McpServer
	if err := proto.Unmarshal(spec, &m); err != nil {
		return nil, fmt.Errorf("decode mcp server: %w", err)
	}
	m.UpdateTime = timestamppb.New(time.Unix(0, ut).UTC())
	return &m, nil
}
