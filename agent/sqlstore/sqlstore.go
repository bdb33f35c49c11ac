// Package sqlstore is the agent.Store over internal/sqldb: one implementation for SQLite and PostgreSQL.
//
// Agents are stored one row per version, their spec as protobuf binary; runs keep their queryable fields in
// columns (their own usage and cost among them, which GetUsage and the tenant budgets sum) and their steps,
// warnings, unit prices and rolled-up usage as protobuf binary. Times are unix nanoseconds.
package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pagetoken"
	"github.com/loom-dev/loom/internal/sqldb"
)

//go:embed migrations
var migrations embed.FS

// Migrations returns the goose migrations, one directory per dialect ("sqlite", "postgres").
func Migrations() fs.FS {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		panic(err) // the embedded directory always exists
	}
	return sub
}

// Store is an agent.Store over a sqldb.DB. It is safe for concurrent use.
type Store struct {
	db     *sqldb.DB
	logger *slog.Logger
	// runs group-commits the run records of concurrent runs (CreateRun, FinishRun): one durable commit for every
	// run that starts or ends at the same moment.
	runs *sqldb.Group
	// reads holds the prepared statements of the reads every run makes (its agent, its stored run), on SQLite's
	// read-only connections (db.Reads: they never wait behind a commit), whose driver would otherwise parse them
	// on every call (pgx caches Postgres's statements itself).
	reads sync.Map // query -> *sql.Stmt
}

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger that records rows a list skipped because they cannot be decoded; the default is
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.logger = l } }

var _ agent.Store = (*Store)(nil)

// New applies the agent migrations to db and returns a Store over it. db stays owned by the caller.
func New(ctx context.Context, db *sqldb.DB, opts ...Option) (*Store, error) {
	db = db.Component(sqldb.AgentComponent)
	if err := db.Migrate(ctx, "agent", Migrations(), "agent_versions", "runs(agent)"); err != nil {
		return nil, fmt.Errorf("agent store: %w", err)
	}
	s := &Store{db: db, logger: slog.Default(), runs: sqldb.NewGroup(db)}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

const agentCols = "name, version, etag, spec, create_time, update_time"

func (s *Store) q(query string) string { return s.db.Rebind(query) }

// queryRow runs a one-row read, written for both dialects, through its prepared statement on SQLite (see reads).
// Only a fixed set of queries comes here.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	if s.db.Dialect != sqldb.SQLite {
		return s.db.QueryRowContext(ctx, s.q(query), args...)
	}
	if st, ok := s.reads.Load(query); ok {
		return st.(*sql.Stmt).QueryRowContext(ctx, args...)
	}
	rdb := s.db.Reads(ctx)
	st, err := rdb.PrepareContext(ctx, s.q(query))
	if err != nil {
		return rdb.QueryRowContext(ctx, s.q(query), args...) // reports the error as the query's own
	}
	if prev, loaded := s.reads.LoadOrStore(query, st); loaded {
		_ = st.Close()
		st = prev.(*sql.Stmt)
	}
	return st.QueryRowContext(ctx, args...)
}

// CreateAgent implements agent.Store.
func (s *Store) CreateAgent(ctx context.Context, tenant string, a *agentv1.Agent) (*agentv1.Agent, error) {
	now := time.Now().UTC()
	spec, etag, err := encodeAgent(a, 1)
	if err != nil {
		return nil, fmt.Errorf("create agent: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("create agent: %w", err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM loom.agent_versions WHERE tenant = ? AND name = ?"),
		tenant, a.GetName()).Scan(&n); err != nil {
		return nil, fmt.Errorf("create agent: %w", err)
	}
	if n > 0 {
		return nil, fmt.Errorf("agent %q: %w", a.GetName(), agent.ErrAlreadyExists)
	}
	_, err = tx.ExecContext(ctx, s.q("INSERT INTO loom.agent_versions (tenant, "+agentCols+") VALUES (?, ?, ?, ?, ?, ?, ?)"),
		tenant, a.GetName(), int64(1), etag, spec, now.UnixNano(), now.UnixNano())
	if isUniqueViolation(err) {
		return nil, fmt.Errorf("agent %q: %w", a.GetName(), agent.ErrAlreadyExists)
	}
	if err != nil {
		return nil, fmt.Errorf("create agent: %w", err)
	}
	if err := tx.Commit(); err != nil {
		if isUniqueViolation(err) {
			return nil, fmt.Errorf("agent %q: %w", a.GetName(), agent.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("create agent: %w", err)
	}
	return decodeAgent(a.GetName(), 1, etag, spec, now.UnixNano(), now.UnixNano())
}

// GetAgent implements agent.Store.
func (s *Store) GetAgent(ctx context.Context, tenant, name string, version int64) (*agentv1.Agent, error) {
	var row *sql.Row
	if version == 0 {
		row = s.queryRow(ctx, "SELECT "+agentCols+" FROM loom.agent_versions WHERE tenant = ? AND name = ? ORDER BY version DESC LIMIT 1", tenant, name)
	} else {
		row = s.queryRow(ctx, "SELECT "+agentCols+" FROM loom.agent_versions WHERE tenant = ? AND name = ? AND version = ?", tenant, name, version)
	}
	a, err := scanAgent(row)
	if errors.Is(err, sql.ErrNoRows) {
		if version != 0 {
			return nil, fmt.Errorf("agent %q version %d: %w", name, version, agent.ErrNotFound)
		}
		return nil, fmt.Errorf("agent %q: %w", name, agent.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get agent: %w", err)
	}
	return a, nil
}

// ListAgents implements agent.Store.
func (s *Store) ListAgents(ctx context.Context, tenant string, pageSize int, pageToken string) ([]*agentv1.Agent, string, error) {
	after := ""
	if pageToken != "" {
		var tok agentToken
		if err := pagetoken.Decode("agents", pageToken, &tok); err != nil || tok.Name == "" {
			return nil, "", &agent.FieldError{Field: "page_token", Reason: "malformed page token"}
		}
		after = tok.Name
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+agentCols+` FROM loom.agent_versions v
		WHERE tenant = ? AND name > ?
		  AND version = (SELECT MAX(version) FROM loom.agent_versions m WHERE m.tenant = v.tenant AND m.name = v.name)
		ORDER BY name LIMIT ?`), tenant, after, pageSize+1)
	if err != nil {
		return nil, "", fmt.Errorf("list agents: %w", err)
	}
	defer rows.Close()
	// A row that cannot be decoded (written by a broken or older server) is skipped with a logged error, so one
	// bad record never takes the whole list down; DeleteAgent still removes it. Pages are cut on the rows read,
	// decodable or not, so a skipped row never ends a listing early.
	var out []*agentv1.Agent
	next, err := sqldb.ReadPage(rows, pageSize, "agents", func(rows *sql.Rows) (agentToken, error) {
		var (
			name, etag      string
			version, ct, ut int64
			spec            []byte
		)
		if err := rows.Scan(&name, &version, &etag, &spec, &ct, &ut); err != nil {
			return agentToken{}, err
		}
		a, err := decodeAgent(name, version, etag, spec, ct, ut)
		if err != nil {
			s.logger.ErrorContext(ctx, "agent store: list agents skips an undecodable agent", "tenant", tenant, "agent", name, "version", version, "err", err)
			return agentToken{Name: name}, nil
		}
		out = append(out, a)
		return agentToken{Name: name}, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list agents: %w", err)
	}
	return out, next, nil
}

// UpdateAgent implements agent.Store.
func (s *Store) UpdateAgent(ctx context.Context, tenant string, a *agentv1.Agent, prevVersion int64) (*agentv1.Agent, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	defer tx.Rollback()
	var latest, createTime int64
	err = tx.QueryRowContext(ctx, s.q("SELECT version, create_time FROM loom.agent_versions WHERE tenant = ? AND name = ? ORDER BY version DESC LIMIT 1"),
		tenant, a.GetName()).Scan(&latest, &createTime)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("agent %q: %w", a.GetName(), agent.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	if latest != prevVersion {
		return nil, fmt.Errorf("agent %q changed since version %d: %w", a.GetName(), prevVersion, agent.ErrConflict)
	}
	version := prevVersion + 1
	spec, etag, err := encodeAgent(a, version)
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	now := time.Now().UTC().UnixNano()
	_, err = tx.ExecContext(ctx, s.q("INSERT INTO loom.agent_versions (tenant, "+agentCols+") VALUES (?, ?, ?, ?, ?, ?, ?)"),
		tenant, a.GetName(), version, etag, spec, createTime, now)
	if err == nil {
		err = tx.Commit()
	}
	if isUniqueViolation(err) {
		return nil, fmt.Errorf("agent %q changed since version %d: %w", a.GetName(), prevVersion, agent.ErrConflict)
	}
	if err != nil {
		return nil, fmt.Errorf("update agent: %w", err)
	}
	return decodeAgent(a.GetName(), version, etag, spec, createTime, now)
}

// DeleteAgent implements agent.Store.
func (s *Store) DeleteAgent(ctx context.Context, tenant, name string) error {
	res, err := s.db.ExecContext(ctx, s.q("DELETE FROM loom.agent_versions WHERE tenant = ? AND name = ?"), tenant, name)
	if err != nil {
		return fmt.Errorf("delete agent: %w", err)
	}
	return deletedOne(res, "delete agent", fmt.Sprintf("agent %q", name))
}

// CreateRun implements agent.Store.
func (s *Store) CreateRun(ctx context.Context, tenant string, r *agentv1.Run, lease agent.Lease) error {
	detail, own, usage, err := encodeRun(r)
	if err != nil {
		return fmt.Errorf("create run: %w", err)
	}
	var key any
	if r.GetIdempotencyKey() != "" {
		key = r.GetIdempotencyKey()
	}
	var until int64
	if !lease.Until.IsZero() {
		until = lease.Until.UnixNano()
	}
	err = s.runs.Exec(ctx, func(ctx context.Context, tx sqldb.Execer) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO loom.runs (id, tenant, agent, agent_version, state, input, output, provider,
		model, input_tokens, output_tokens, error, idempotency_key, detail, create_time, end_time, owner, lease_until,
		cached_tokens, cost_nanos, cost_unknown, price_version, blueprint, usage)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			r.GetId(), tenant, r.GetAgent(), r.GetAgentVersion(), int64(r.GetState()), r.GetInput(), r.GetOutput(),
			int64(r.GetProvider()), r.GetModel(), own.InputTokens, own.OutputTokens,
			r.GetError(), key, detail, tsNanos(r.GetCreateTime()), tsNanos(r.GetEndTime()), lease.Owner, until,
			own.CachedInputTokens, int64(own.Cost), boolInt(own.CostUnknown), r.GetUsage().GetPriceVersion(), r.GetBlueprint(), usage)
		return err
	})
	if isUniqueViolation(err) {
		return fmt.Errorf("run with idempotency key %q: %w", r.GetIdempotencyKey(), agent.ErrAlreadyExists)
	}
	if err != nil {
		return fmt.Errorf("create run: %w", err)
	}
	return nil
}

// FinishRun implements agent.Store.
func (s *Store) FinishRun(ctx context.Context, tenant string, r *agentv1.Run) error {
	detail, own, usage, err := encodeRun(r)
	if err != nil {
		return fmt.Errorf("finish run: %w", err)
	}
	var n int64
	err = s.runs.Exec(ctx, func(ctx context.Context, tx sqldb.Execer) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE loom.runs SET state = ?, output = ?, provider = ?, model = ?,
		input_tokens = ?, output_tokens = ?, error = ?, detail = ?, end_time = ?,
		cached_tokens = ?, cost_nanos = ?, cost_unknown = ?, price_version = ?, usage = ?
		WHERE tenant = ? AND id = ? AND state = ?`),
			int64(r.GetState()), r.GetOutput(), int64(r.GetProvider()), r.GetModel(), own.InputTokens,
			own.OutputTokens, r.GetError(), detail, tsNanos(r.GetEndTime()),
			own.CachedInputTokens, int64(own.Cost), boolInt(own.CostUnknown), r.GetUsage().GetPriceVersion(), usage,
			tenant, r.GetId(), int64(agentv1.RunState_RUN_STATE_RUNNING))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return fmt.Errorf("finish run: %w", err)
	}
	if n == 1 {
		return nil
	}
	if _, err := s.GetRun(ctx, tenant, r.GetId()); err != nil {
		return err
	}
	return fmt.Errorf("run %s already finished: %w", r.GetId(), agent.ErrConflict)
}

const runCols = `id, agent, agent_version, state, input, output, provider, model, input_tokens, output_tokens, error,
	idempotency_key, create_time, end_time, blueprint, usage`

// GetRun implements agent.Store.
func (s *Store) GetRun(ctx context.Context, tenant, id string) (*agentv1.Run, error) {
	return s.getRun(ctx, "id", tenant, id)
}

// GetRunByIdempotencyKey implements agent.Store.
func (s *Store) GetRunByIdempotencyKey(ctx context.Context, tenant, key string) (*agentv1.Run, error) {
	return s.getRun(ctx, "idempotency_key", tenant, key)
}

func (s *Store) getRun(ctx context.Context, col, tenant, val string) (*agentv1.Run, error) {
	row := s.queryRow(ctx, "SELECT "+runCols+", detail FROM loom.runs WHERE tenant = ? AND "+col+" = ?", tenant, val)
	r, err := scanRun(row, true)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("run %q: %w", val, agent.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get run: %w", err)
	}
	return r, nil
}

// ListRuns implements agent.Store.
func (s *Store) ListRuns(ctx context.Context, tenant string, f agent.RunFilter, pageSize int, pageToken string) ([]*agentv1.Run, string, error) {
	var where []string
	args := []any{tenant}
	where = append(where, "tenant = ?")
	if f.Agent != "" {
		where = append(where, "agent = ?")
		args = append(args, f.Agent)
	}
	if !f.Start.IsZero() {
		where = append(where, "create_time >= ?")
		args = append(args, f.Start.UnixNano())
	}
	if !f.End.IsZero() {
		where = append(where, "create_time < ?")
		args = append(args, f.End.UnixNano())
	}
	if pageToken != "" {
		var tok runToken
		if err := pagetoken.Decode("runs", pageToken, &tok); err != nil || tok.ID == "" {
			return nil, "", &agent.FieldError{Field: "page_token", Reason: "malformed page token"}
		}
		where = append(where, "(create_time < ? OR (create_time = ? AND id < ?))")
		args = append(args, tok.Time, tok.Time, tok.ID)
	}
	args = append(args, pageSize+1)
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+runCols+" FROM loom.runs WHERE "+strings.Join(where, " AND ")+
		" ORDER BY create_time DESC, id DESC LIMIT ?"), args...)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	// A row that cannot be decoded (a column of the wrong type, text that is not UTF-8 and so could never be sent
	// in a protobuf message) is skipped with a logged error: one bad record never takes the whole list down, and
	// DeleteRun still removes it. Pages are cut on the rows read, so a skipped row never ends a listing early.
	var out []*agentv1.Run
	next, err := sqldb.ReadPage(rows, pageSize, "runs", func(rows *sql.Rows) (runToken, error) {
		vals := make([]any, 16) // runCols, scanned loosely so a bad value fails its row, not the list
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return runToken{}, err
		}
		id, _ := vals[0].(string)
		ct, _ := vals[12].(int64)
		r, err := decodeListedRun(vals)
		if err != nil {
			s.logger.ErrorContext(ctx, "agent store: list runs skips an undecodable run", "tenant", tenant,
				"run", strings.ToValidUTF8(fmt.Sprint(vals[0]), "?"), "err", err)
		} else {
			out = append(out, r)
		}
		return runToken{Time: ct, ID: id}, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	return out, next, nil
}

// CountRuns implements agent.Store.
func (s *Store) CountRuns(ctx context.Context, tenant, agentName, input string) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM loom.runs WHERE tenant = ? AND agent = ? AND input = ?"),
		tenant, agentName, input).Scan(&n); err != nil {
		return 0, fmt.Errorf("count runs: %w", err)
	}
	return n, nil
}

// DeleteRun implements agent.Store.
func (s *Store) DeleteRun(ctx context.Context, tenant, id string) error {
	res, err := s.db.ExecContext(ctx, s.q("DELETE FROM loom.runs WHERE tenant = ? AND id = ?"), tenant, id)
	if err != nil {
		return fmt.Errorf("delete run: %w", err)
	}
	if _, err := s.db.ExecContext(ctx, s.q("DELETE FROM loom.run_waits WHERE tenant = ? AND run_id = ?"), tenant, id); err != nil {
		return fmt.Errorf("delete run: %w", err)
	}
	return deletedOne(res, "delete run", fmt.Sprintf("run %q", id))
}

// RenewLeases implements agent.Store.
func (s *Store) RenewLeases(ctx context.Context, owner string, until time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE loom.runs SET lease_until = ? WHERE state = ? AND owner = ?"),
		until.UnixNano(), int64(agentv1.RunState_RUN_STATE_RUNNING), owner)
	if err != nil {
		return 0, fmt.Errorf("renew run leases: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("renew run leases: %w", err)
	}
	return n, nil
}

// FailExpiredRuns implements agent.Store.
func (s *Store) FailExpiredRuns(ctx context.Context, now time.Time, reason string) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE loom.runs SET state = ?, error = ?, end_time = ? WHERE state = ? AND lease_until < ?"),
		int64(agentv1.RunState_RUN_STATE_FAILED), reason, now.UnixNano(), int64(agentv1.RunState_RUN_STATE_RUNNING), now.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("fail expired runs: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("fail expired runs: %w", err)
	}
	return n, nil
}

// decodeListedRun builds a run (without steps) from the runCols of one row scanned into vals. It fails on a
// value of the wrong type and on text that is not valid UTF-8 (a protobuf string must be).
func decodeListedRun(vals []any) (*agentv1.Run, error) {
	str := func(i int, name string, null bool) (string, error) {
		switch v := vals[i].(type) {
		case string:
			if !utf8.ValidString(v) {
				return "", fmt.Errorf("%s is not valid UTF-8", name)
			}
			return v, nil
		case []byte:
			if !utf8.Valid(v) {
				return "", fmt.Errorf("%s is not valid UTF-8", name)
			}
			return string(v), nil
		case nil:
			if null {
				return "", nil
			}
		}
		return "", fmt.Errorf("%s has type %T, want text", name, vals[i])
	}
	num := func(i int, name string) (int64, error) {
		if v, ok := vals[i].(int64); ok {
			return v, nil
		}
		return 0, fmt.Errorf("%s has type %T, want an integer", name, vals[i])
	}
	var (
		r    agentv1.Run
		errs []error
		n    [6]int64
	)
	texts := []struct {
		dst  *string
		i    int
		name string
		null bool
	}{{&r.Id, 0, "id", false}, {&r.Agent, 1, "agent", false}, {&r.Input, 4, "input", false},
		{&r.Output, 5, "output", false}, {&r.Model, 7, "model", false}, {&r.Error, 10, "error", false},
		{&r.IdempotencyKey, 11, "idempotency_key", true}}
	for _, t := range texts {
		v, err := str(t.i, t.name, t.null)
		*t.dst = v
		errs = append(errs, err)
	}
	for k, c := range []struct {
		i    int
		name string
	}{{2, "agent_version"}, {3, "state"}, {6, "provider"}, {8, "input_tokens"}, {9, "output_tokens"}, {12, "create_time"}} {
		v, err := num(c.i, c.name)
		n[k] = v
		errs = append(errs, err)
	}
	et, err := num(13, "end_time")
	errs = append(errs, err)
	r.Blueprint, err = str(14, "blueprint", false)
	errs = append(errs, err)
	var usage []byte
	switch v := vals[15].(type) {
	case []byte:
		usage = v
	case string:
		usage = []byte(v)
	case nil:
	default:
		errs = append(errs, fmt.Errorf("usage has type %T, want bytes", v))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	r.AgentVersion, r.State, r.Provider = n[0], agentv1.RunState(n[1]), agentv1.Provider(n[2])
	r.Usage = &agentv1.Usage{InputTokens: n[3], OutputTokens: n[4]}
	if len(usage) > 0 {
		if err := proto.Unmarshal(usage, r.Usage); err != nil {
			return nil, fmt.Errorf("decode usage: %w", err)
		}
	}
	r.CreateTime = timestamppb.New(time.Unix(0, n[5]).UTC())
	if et != 0 {
		r.EndTime = timestamppb.New(time.Unix(0, et).UTC())
	}
	return &r, nil
}

type scanner interface{ Scan(dest ...any) error }

func scanAgent(row scanner) (*agentv1.Agent, error) {
	var (
		name, etag      string
		version, ct, ut int64
		spec            []byte
	)
	if err := row.Scan(&name, &version, &etag, &spec, &ct, &ut); err != nil {
		return nil, err
	}
	return decodeAgent(name, version, etag, spec, ct, ut)
}

func scanRun(row scanner, withDetail bool) (*agentv1.Run, error) {
	var (
		r               agentv1.Run
		state, provider int64
		in, out, ct, et int64
		key             sql.NullString
		detail, usage   []byte
	)
	dest := []any{&r.Id, &r.Agent, &r.AgentVersion, &state, &r.Input, &r.Output, &provider, &r.Model, &in, &out,
		&r.Error, &key, &ct, &et, &r.Blueprint, &usage}
	if withDetail {
		dest = append(dest, &detail)
	}
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	if len(detail) > 0 {
		var d agentv1.Run
		if err := proto.Unmarshal(detail, &d); err != nil {
			return nil, fmt.Errorf("decode run detail: %w", err)
		}
		r.Steps, r.Warnings, r.Price = d.Steps, d.Warnings, d.Price
		if state == stateWaiting { // pending calls mean nothing once the run no longer waits
			r.PendingToolCalls, r.WaitDeadline = d.PendingToolCalls, d.WaitDeadline
		}
	}
	r.State = agentv1.RunState(state)
	r.Provider = agentv1.Provider(provider)
	r.Usage = &agentv1.Usage{InputTokens: in, OutputTokens: out}
	if len(usage) > 0 { // the rolled-up usage; runs stored before it have only their own tokens
		if err := proto.Unmarshal(usage, r.Usage); err != nil {
			return nil, fmt.Errorf("decode run usage: %w", err)
		}
	}
	r.IdempotencyKey = key.String
	r.CreateTime = timestamppb.New(time.Unix(0, ct).UTC())
	if et != 0 {
		r.EndTime = timestamppb.New(time.Unix(0, et).UTC())
	}
	return &r, nil
}

// encodeAgent returns a's spec without output-only fields, and the etag of the version.
func encodeAgent(a *agentv1.Agent, version int64) ([]byte, string, error) {
	c := proto.CloneOf(a)
	c.Version, c.Etag, c.CreateTime, c.UpdateTime = 0, "", nil, nil
	spec, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil, "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00", version)
	h.Write(spec)
	return spec, hex.EncodeToString(h.Sum(nil)[:12]), nil
}

func decodeAgent(name string, version int64, etag string, spec []byte, ct, ut int64) (*agentv1.Agent, error) {
	var a agentv1.Agent
	if err := proto.Unmarshal(spec, &a); err != nil {
		return nil, fmt.Errorf("decode agent %q: %w", name, err)
	}
	a.Name, a.Version, a.Etag = name, version, etag
	a.CreateTime = timestamppb.New(time.Unix(0, ct).UTC())
	a.UpdateTime = timestamppb.New(time.Unix(0, ut).UTC())
	return &a, nil
}

func encodeDetail(r *agentv1.Run) ([]byte, error) {
	return proto.Marshal(&agentv1.Run{Steps: r.GetSteps(), Warnings: r.GetWarnings(), Price: r.GetPrice(),
		PendingToolCalls: r.GetPendingToolCalls(), WaitDeadline: r.GetWaitDeadline()})
}

// encodeRun returns the columns of r that are computed: its detail, its own usage and its encoded usage (nil
// when r has none).
func encodeRun(r *agentv1.Run) (detail []byte, own agent.UsageSum, usage []byte, err error) {
	if detail, err = encodeDetail(r); err != nil {
		return nil, agent.UsageSum{}, nil, err
	}
	if usage, err = marshalUsage(r.GetUsage()); err != nil {
		return nil, agent.UsageSum{}, nil, err
	}
	return detail, agent.OwnUsage(r), usage, nil
}

// deletedOne checks the result of a DELETE for op (for example "delete agent") that should remove one row: it
// wraps agent.ErrNotFound with notFound (for example `agent "a"`) when none was removed.
func deletedOne(res sql.Result, op, notFound string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", notFound, agent.ErrNotFound)
	}
	return nil
}

func marshalUsage(u *agentv1.Usage) ([]byte, error) {
	if u == nil {
		return nil, nil
	}
	return proto.Marshal(u)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func tsNanos(ts *timestamppb.Timestamp) int64 {
	if ts == nil {
		return 0
	}
	return ts.AsTime().UnixNano()
}

type agentToken struct {
	Name string `json:"n"`
}

type runToken struct {
	Time int64  `json:"t"`
	ID   string `json:"i"`
}

func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	// modernc.org/sqlite: "constraint failed: UNIQUE constraint failed: ..." (SQLITE_CONSTRAINT_UNIQUE/PRIMARYKEY).
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || strings.Contains(msg, "PRIMARY KEY")
}
