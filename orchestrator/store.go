package orchestrator

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/fault"
)

// Errors a Store returns, possibly wrapped. The handler (orchestrator/orchestratorrpc) maps them to connect codes.
var (
	// ErrNotFound: the blueprint (or version) does not exist in the tenant.
	ErrNotFound = fault.ErrNotFound
	// ErrAlreadyExists: a blueprint with that name exists in the tenant.
	ErrAlreadyExists = fault.ErrAlreadyExists
	// ErrConflict: an update's expected version is not the latest version.
	ErrConflict = fault.ErrConflict
	// ErrFailedPrecondition: the resource is not in a state that allows the operation.
	ErrFailedPrecondition = fault.ErrFailedPrecondition
	// ErrInvalidArgument: a run input or approval payload does not match its schema.
	ErrInvalidArgument = fault.ErrInvalidArgument
	// ErrInvalidPageToken: a page token was not issued by the store.
	ErrInvalidPageToken = errors.New("invalid page token")
	// ErrUnavailable: a service the operation needs (the agent service) did not answer; retrying may succeed.
	ErrUnavailable = fault.ErrUnavailable
)

// Live is a subscription to one run's live events in the process executing it (Runs.Follow).
type Live struct {
	// Deltas receives AgentTextDelta events, never stored: each carries the sequence of the last stored event
	// before it. A watcher that falls behind misses deltas (never stored events).
	Deltas <-chan *orchestratorv1.WatchRunResponse
	// Changed receives a value when new events of the run were stored by this process (coalesced).
	Changed <-chan struct{}
	// Stop ends the subscription; safe to call more than once.
	Stop func()
}

// Store keeps versioned blueprints. Every method is scoped to a tenant; a tenant never sees another's records.
// Implementations are safe for concurrent use. Blueprints passed in are not modified; the ones returned carry
// their version and create_time.
type Store interface {
	// CreateBlueprint stores version 1 of bp. ErrAlreadyExists if the name is taken.
	CreateBlueprint(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint) (*orchestratorv1.Blueprint, error)
	// UpdateBlueprint stores bp as the next version of the blueprint named bp.Name. ErrNotFound if there is
	// none; ErrConflict if expectedVersion is non-zero and is not the latest version.
	UpdateBlueprint(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, expectedVersion int64) (*orchestratorv1.Blueprint, error)
	// GetBlueprint returns a version of a blueprint; version 0 means the latest. ErrNotFound if absent.
	GetBlueprint(ctx context.Context, tenant, name string, version int64) (*orchestratorv1.Blueprint, error)
	// ListBlueprints returns up to pageSize (at least 1) latest versions ordered by name, after the position
	// pageToken names ("" for the first page), and the token of the next page ("" on the last).
	// ErrInvalidPageToken if the token is not one the store issued.
	ListBlueprints(ctx context.Context, tenant string, pageSize int, pageToken string) ([]*orchestratorv1.Blueprint, string, error)
	// DeleteBlueprint deletes a blueprint and all its versions. ErrNotFound if absent.
	DeleteBlueprint(ctx context.Context, tenant, name string) error
}

// Runs starts and tracks durable runs. Every method is scoped to a tenant. Implementations (orchestrator/engine)
// are safe for concurrent use and return the sentinels above, possibly wrapped.
type Runs interface {
	// StartRun starts a run of bp (a stored version) with input. A non-empty idempotencyKey already used in the
	// tenant returns that run instead when the request is the same (blueprint, version and input), and
	// ErrAlreadyExists naming the key when it is not. ErrInvalidArgument if input does not match the input schema.
	StartRun(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, input *structpb.Struct, idempotencyKey string) (*orchestratorv1.WorkflowRun, error)
	// GetRun returns a run with its steps. ErrNotFound if absent.
	GetRun(ctx context.Context, tenant, id string) (*orchestratorv1.WorkflowRun, error)
	// ListRuns lists runs newest first, optionally only of one blueprint or in one state (zero values: all).
	ListRuns(ctx context.Context, tenant, blueprint string, state orchestratorv1.RunState, pageSize int, pageToken string) ([]*orchestratorv1.WorkflowRun, string, error)
	// CancelRun cancels a run. ErrFailedPrecondition if it already ended.
	CancelRun(ctx context.Context, tenant, id, reason string) (*orchestratorv1.WorkflowRun, error)
	// DeleteRun deletes a run that has ended, with its steps and events, even one whose record no longer
	// decodes. ErrNotFound if absent; ErrFailedPrecondition if it has not ended (cancel it first).
	DeleteRun(ctx context.Context, tenant, id string) error
	// Events returns up to limit events with sequence numbers after afterSequence, in order, and whether the run
	// had ended before they were read: when it had and no events are returned, there will be no more.
	Events(ctx context.Context, tenant, id string, afterSequence int64, limit int) ([]*orchestratorv1.WatchRunResponse, bool, error)
	// Follow subscribes to the live events of run id in this process until Stop: see Live. It never fails; a
	// run that does not exist, or that another replica executes, sends nothing.
	Follow(tenant, id string) Live
	// ListPendingApprovals lists approval steps waiting for a person, oldest first, optionally of one run.
	ListPendingApprovals(ctx context.Context, tenant, runID string, pageSize int, pageToken string) ([]*orchestratorv1.Approval, string, error)
	// SubmitApproval approves (payload checked against the step's schema: ErrInvalidArgument) or rejects a waiting
	// approval step. ErrFailedPrecondition if the step is not waiting.
	SubmitApproval(ctx context.Context, tenant, runID, stepID string, decision orchestratorv1.Decision, payload *structpb.Struct, comment string) (*orchestratorv1.WorkflowRun, error)
	// Forecast forecasts a run of bp (a stored version) in total and per step from up to window of the version's
	// latest successful runs; the step forecasts carry no budgets.
	Forecast(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, window int) (*orchestratorv1.EstimateRunResponse, error)
}
