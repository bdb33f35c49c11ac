package agent

import (
	"context"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/pricing"
)

// Sentinel errors returned (wrapped) by a Store and by the handler (agent/agentrpc): the kinds every service shares
// (internal/fault), under the names the agent's callers use. The handler edge maps them to Connect codes through
// internal/rpcerr.
var (
	// ErrNotFound means the agent, version or run does not exist in the caller's tenant.
	ErrNotFound = fault.ErrNotFound
	// ErrAlreadyExists means the agent name, or the run's idempotency key, is taken in the tenant.
	ErrAlreadyExists = fault.ErrAlreadyExists
	// ErrConflict means a concurrent change won: an etag or version no longer matches, or a run already finished.
	ErrConflict = fault.ErrConflict
	// ErrInvalidArgument is matched by every *FieldError.
	ErrInvalidArgument = fault.ErrInvalidArgument
	// ErrFailedPrecondition is matched by errors whose operation cannot run in the current state (a finished run,
	// a provider that is not configured).
	ErrFailedPrecondition = fault.ErrFailedPrecondition
)

// FieldError is a client mistake in one request field. It matches ErrInvalidArgument.
type FieldError = fault.FieldError

// PreconditionError is an operation refused in the current state; it matches ErrFailedPrecondition.
type PreconditionError string

func (e PreconditionError) Error() string        { return string(e) }
func (e PreconditionError) Is(target error) bool { return target == ErrFailedPrecondition }

// RunFilter selects runs for ListRuns. Zero fields do not filter.
type RunFilter struct {
	// Agent keeps runs of this agent only; empty keeps all.
	Agent string
	// Start keeps runs created at or after it; zero keeps all.
	Start time.Time
	// End keeps runs created before it; zero keeps all.
	End time.Time
}

// Store persists agents and runs. Every method is scoped by tenant, which must not be empty: a tenant never sees
// another tenant's agents or runs. Implementations are safe for concurrent use.
type Store interface {
	// CreateAgent stores a at version 1 and returns it with version, etag and times set. ErrAlreadyExists if the
	// name is taken. Output-only fields of a are ignored.
	CreateAgent(ctx context.Context, tenant string, a *agentv1.Agent) (*agentv1.Agent, error)
	// GetAgent returns the given version of an agent, or its latest when version is 0. ErrNotFound if missing.
	GetAgent(ctx context.Context, tenant, name string, version int64) (*agentv1.Agent, error)
	// ListAgents returns up to pageSize latest versions ordered by name after pageToken, and the token of the
	// next page (empty on the last). A malformed token is a *FieldError on "page_token".
	ListAgents(ctx context.Context, tenant string, pageSize int, pageToken string) ([]*agentv1.Agent, string, error)
	// UpdateAgent stores a as version prevVersion+1. ErrConflict if the latest version is no longer prevVersion,
	// ErrNotFound if the agent does not exist.
	UpdateAgent(ctx context.Context, tenant string, a *agentv1.Agent, prevVersion int64) (*agentv1.Agent, error)
	// DeleteAgent deletes every version of an agent; its runs stay. ErrNotFound if missing.
	DeleteAgent(ctx context.Context, tenant, name string) error

	// CreateRun stores a new run (id, agent, version, state, input, idempotency key, create time) leased to
	// lease.Owner until lease.Until. ErrAlreadyExists if its idempotency key is already used in the tenant. r may
	// already be finished (a run written once, at its end): its whole final state is stored then, as by FinishRun.
	CreateRun(ctx context.Context, tenant string, r *agentv1.Run, lease Lease) error
	// FinishRun stores r's final state, output, steps, usage, error, warnings and end time, only if the stored run
	// is still RUNNING. ErrConflict if it already finished; ErrNotFound if missing.
	FinishRun(ctx context.Context, tenant string, r *agentv1.Run) error
	// GetRun returns a run with its steps. ErrNotFound if missing.
	GetRun(ctx context.Context, tenant, id string) (*agentv1.Run, error)
	// GetRunByIdempotencyKey returns the run started with key. ErrNotFound if none.
	GetRunByIdempotencyKey(ctx context.Context, tenant, key string) (*agentv1.Run, error)
	// ListRuns returns up to pageSize runs matching f, newest first, without steps, and the next page token.
	// A malformed token is a *FieldError on "page_token". A stored run that cannot be decoded is skipped (and
	// logged), never failing the list.
	ListRuns(ctx context.Context, tenant string, f RunFilter, pageSize int, pageToken string) ([]*agentv1.Run, string, error)
	// CountRuns counts the runs of agent with exactly this input, in any state.
	CountRuns(ctx context.Context, tenant, agent, input string) (int64, error)
	// DeleteRun deletes a run and its steps, in any state, decodable or not. ErrNotFound if missing.
	DeleteRun(ctx context.Context, tenant, id string) error

	// RenewLeases extends to until the lease of every RUNNING run owned by owner, in every tenant, and returns
	// how many there were.
	RenewLeases(ctx context.Context, owner string, until time.Time) (int64, error)
	// UsageRows returns up to pageSize rows of the own usage (OwnUsage) of runs created in [start, end), one per UTC
	// day, agent, blueprint, provider and model in that order, after pageToken, and the next page's token. A token
	// carries the range of the first page, which later pages keep. A malformed token is a *FieldError on
	// "page_token".
	UsageRows(ctx context.Context, tenant string, start, end time.Time, pageSize int, pageToken string) ([]UsageRow, string, error)
	// UsageTotal sums the own usage of runs created at or after start and, unless end is zero, before end.
	UsageTotal(ctx context.Context, tenant string, start, end time.Time) (UsageSum, error)
	// RecentRuns returns the duration and rolled-up cost (nano-units) of up to n of the latest SUCCEEDED runs of an
	// agent version, newest first.
	RecentRuns(ctx context.Context, tenant, agent string, version int64, n int) ([]RunSample, error)
	// GetTenantBudget returns the tenant's budget, empty when none is set.
	GetTenantBudget(ctx context.Context, tenant string) (*agentv1.TenantBudget, error)
	// SetTenantBudget replaces the tenant's budget.
	SetTenantBudget(ctx context.Context, tenant string, b *agentv1.TenantBudget) error

	// FailExpiredRuns marks FAILED, with reason as the error and now as the end time, every RUNNING run in every
	// tenant whose lease ended before now (its owner crashed or lost the database for longer than a lease), and
	// returns how many there were.
	FailExpiredRuns(ctx context.Context, now time.Time, reason string) (int64, error)

	// WaitRun stores r, RUNNING in the store, as waiting for client tool results: state
	// RUN_STATE_WAITING_FOR_TOOLS with r's steps, usage, warnings, pending calls and wait deadline, and w's
	// deadline and state at version 1. The run's lease is released. ErrConflict if the stored run is not RUNNING;
	// ErrNotFound if missing.
	WaitRun(ctx context.Context, tenant string, r *agentv1.Run, w Wait) error
	// GetWait returns the saved state of a waiting run. ErrNotFound if the run is missing or not waiting.
	GetWait(ctx context.Context, tenant, id string) (Wait, error)
	// UpdateWait replaces a waiting run's saved state with w.State, and its steps and pending calls with r's,
	// if the saved state is still at w.Version; the version then goes up by one. ErrConflict if the version moved
	// on or the run no longer waits.
	UpdateWait(ctx context.Context, tenant string, r *agentv1.Run, w Wait) error
	// ResumeRun makes a waiting run whose saved state is at version RUNNING again, leased to lease, and drops its
	// saved state (the caller read it with GetWait). Exactly one of concurrent callers succeeds; the others get
	// ErrConflict, as does a run that no longer waits or whose state moved on.
	ResumeRun(ctx context.Context, tenant, id string, version int64, lease Lease) error
	// FinishWait stores r's final state (as FinishRun does) only if the stored run is waiting, and drops its saved
	// state. ErrConflict if it no longer waits; ErrNotFound if missing.
	FinishWait(ctx context.Context, tenant string, r *agentv1.Run) error
	// FailExpiredWaits marks FAILED, with reason as the error and now as the end time, every waiting run in every
	// tenant whose wait deadline is before now, drops their saved state, and returns how many there were.
	FailExpiredWaits(ctx context.Context, now time.Time, reason string) (int64, error)

	// PutMCPServer stores m (header values included) under its name, replacing one of that name, with update
	// time now, and returns it as stored.
	PutMCPServer(ctx context.Context, tenant string, m *agentv1.McpServer) (*agentv1.McpServer, error)
	// GetMCPServer returns a stored MCP server with its header values. ErrNotFound if missing.
	GetMCPServer(ctx context.Context, tenant, name string) (*agentv1.McpServer, error)
	// ListMCPServers returns up to limit of the tenant's MCP servers (header values included) ordered by name.
	ListMCPServers(ctx context.Context, tenant string, limit int) ([]*agentv1.McpServer, error)
	// DeleteMCPServer deletes an MCP server. ErrNotFound if missing.
	DeleteMCPServer(ctx context.Context, tenant, name string) error
}

// Wait is the saved state of a run waiting for client tool results.
type Wait struct {
	// Deadline is when the wait ends: the run fails after it.
	Deadline time.Time
	// Version counts the changes of State, from 1.
	Version int64
	// State is what the handler (agentrpc.Server) needs to resume the run, in its own encoding; stores keep it as bytes.
	State []byte
}

// RunSample is one finished run's duration and cost, for forecasts.
type RunSample struct {
	Duration time.Duration
	Cost     pricing.Nanos
}

// Lease is the claim of one process on the runs it executes. A RUNNING run whose lease has ended was cut off.
type Lease struct {
	// Owner names the process, unique per process start.
	Owner string
	// Until is when the claim ends unless renewed; zero means already ended.
	Until time.Time
}
