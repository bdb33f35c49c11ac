package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/sqldb"
)

const nanosPerDay = int64(24 * time.Hour)

// usageSums are the aggregate columns of a usage query, cast so that both dialects scan them as integers
// (Postgres' SUM of BIGINT is NUMERIC).
const usageSums = `COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT),
	CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT), COALESCE(MAX(cost_unknown), 0)`

// usageToken is the last row of a page of UsageRows; the range is part of it, so a token is refused for another.
type usageToken struct {
	Start, End int64
	Day        int64
	Agent      string
	Blueprint  string
	Provider   int64
	Model      string
}

// UsageRows implements agent.Store: one GROUP BY over the runs in range (index runs_list), pages cut by keyset on
// the group's key.
func (s *Store) UsageRows(ctx context.Context, tenant string, start, end time.Time, pageSize int, pageToken string) ([]agent.UsageRow, string, error) {
	args := []any{tenant, start.UnixNano(), end.UnixNano()}
	after := ""
	if pageToken != "" {
		var tok usageToken
		if err := pagetoken.Decode("usage", pageToken, &tok); err != nil || tok.End <= tok.Start {
			return nil, "", &agent.FieldError{Field: "page_token", Reason: "malformed page token"}
		}
		// The range is the first page's: later pages of a range ending "now" must not move with the clock.
		start, end = time.Unix(0, tok.Start), time.Unix(0, tok.End)
		args[1], args[2] = tok.Start, tok.End
		after = ` WHERE (g.day > ?) OR (g.day = ? AND (g.agent > ? OR (g.agent = ? AND (g.blueprint > ? OR (g.blueprint = ? AND
			(g.provider > ? OR (g.provider = ? AND g.model > ?)))))))`
		args = append(args, tok.Day, tok.Day, tok.Agent, tok.Agent, tok.Blueprint, tok.Blueprint, tok.Provider, tok.Provider, tok.Model)
	}
	args = append(args, pageSize+1)
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT g.* FROM (SELECT create_time / `+fmt.Sprint(nanosPerDay)+` AS day, agent,
		blueprint, provider, model, `+usageSums+` FROM loom.runs WHERE tenant = ? AND create_time >= ? AND create_time < ?
		GROUP BY create_time / `+fmt.Sprint(nanosPerDay)+`, agent, blueprint, provider, model) g`+after+`
		ORDER BY g.day, g.agent, g.blueprint, g.provider, g.model LIMIT ?`), args...)
	if err != nil {
		return nil, "", fmt.Errorf("usage rows: %w", err)
	}
	defer rows.Close()
	var out []agent.UsageRow
	next, err := sqldb.ReadPage(rows, pageSize, "usage", func(rows *sql.Rows) (usageToken, error) {
		var (
			r               agent.UsageRow
			day, prov, cost int64
			unknown         int64
		)
		if err := rows.Scan(&day, &r.Agent, &r.Blueprint, &prov, &r.Model, &r.Sum.Runs, &r.Sum.InputTokens,
			&r.Sum.OutputTokens, &r.Sum.CachedInputTokens, &cost, &unknown); err != nil {
			return usageToken{}, err
		}
		r.Day = time.Unix(0, day*nanosPerDay).UTC()
		r.Provider, r.Sum.Cost, r.Sum.CostUnknown = agentv1.Provider(prov), pricing.Nanos(cost), unknown != 0
		out = append(out, r)
		return usageToken{Start: start.UnixNano(), End: end.UnixNano(), Day: day, Agent: r.Agent, Blueprint: r.Blueprint, Provider: prov, Model: r.Model}, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("usage rows: %w", err)
	}
	return out, next, nil
}

// UsageTotal implements agent.Store.
func (s *Store) UsageTotal(ctx context.Context, tenant string, start, end time.Time) (agent.UsageSum, error) {
	q := `SELECT ` + usageSums + ` FROM loom.runs WHERE tenant = ? AND create_time >= ?`
	args := []any{tenant, start.UnixNano()}
	if !end.IsZero() {
		q += ` AND create_time < ?`
		args = append(args, end.UnixNano())
	}
	var (
		u             agent.UsageSum
		cost, unknown int64
	)
	if err := s.db.QueryRowContext(ctx, s.q(q), args...).Scan(&u.Runs, &u.InputTokens, &u.OutputTokens,
		&u.CachedInputTokens, &cost, &unknown); err != nil {
		return agent.UsageSum{}, fmt.Errorf("usage total: %w", err)
	}
	u.Cost, u.CostUnknown = pricing.Nanos(cost), unknown != 0
	return u, nil
}

// RecentRuns implements agent.Store.
func (s *Store) RecentRuns(ctx context.Context, tenant, agentName string, version int64, n int) ([]agent.RunSample, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT create_time, end_time, usage FROM loom.runs
		WHERE tenant = ? AND agent = ? AND agent_version = ? AND state = ? AND end_time > 0
		ORDER BY create_time DESC, id DESC LIMIT ?`), tenant, agentName, version, int64(agentv1.RunState_RUN_STATE_SUCCEEDED), n)
	if err != nil {
		return nil, fmt.Errorf("recent runs: %w", err)
	}
	defer rows.Close()
	var out []agent.RunSample
	for rows.Next() {
		var (
			ct, et int64
			usage  []byte
		)
		if err := rows.Scan(&ct, &et, &usage); err != nil {
			return nil, fmt.Errorf("recent runs: %w", err)
		}
		var u agentv1.Usage
		if err := proto.Unmarshal(usage, &u); err != nil {
			continue // an undecodable record is left out of the sample
		}
		c, _ := pricing.FromMoney(u.GetCost())
		out = append(out, agent.RunSample{Duration: time.Duration(et - ct), Cost: c})
	}
	return out, rows.Err()
}

// GetTenantBudget implements agent.Store.
func (s *Store) GetTenantBudget(ctx context.Context, tenant string) (*agentv1.TenantBudget, error) {
	var b []byte
	err := s.db.QueryRowContext(ctx, s.q(`SELECT budget FROM loom.tenant_budgets WHERE tenant = ?`), tenant).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return &agentv1.TenantBudget{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get tenant budget: %w", err)
	}
	var out agentv1.TenantBudget
	if err := proto.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode tenant budget: %w", err)
	}
	return &out, nil
}

// SetTenantBudget implements agent.Store.
func (s *Store) SetTenantBudget(ctx context.Context, tenant string, b *agentv1.TenantBudget) error {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	if err != nil {
		return fmt.Errorf("set tenant budget: %w", err)
	}
	if data == nil {
		data = []byte{}
	}
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO loom.tenant_budgets (tenant, budget, update_time) VALUES (?, ?, ?)
		ON CONFLICT (tenant) DO UPDATE SET budget = excluded.budget, update_time = excluded.update_time`),
		tenant, data, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("set tenant budget: %w", err)
	}
	return nil
}
