// Package orchestratorrpc is the orchestrator service's Connect handler, the edge over the domain (package
// orchestrator): the [Server] reads the caller's tenant from the context (internal/principal), calls the domain
// and maps errors to connect codes in one place ([Server.connectError]).
//
// Blueprints are parsed and validated by [blueprint], laid out by [canvas] and kept by an [orchestrator.Store]
// (orchestrator/sqlstore). Durable runs (StartRun, GetRun, ListRuns, CancelRun, DeleteRun, WatchRun,
// ListPendingApprovals, SubmitApproval, EstimateRun) are served by the [orchestrator.Runs] implementation given
// to [New], orchestrator/engine.
//
// [blueprint]: github.com/loom-dev/loom/orchestrator/blueprint
// [canvas]: github.com/loom-dev/loom/orchestrator/canvas
package orchestratorrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcerr"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/orchestrator"
	"github.com/loom-dev/loom/orchestrator/blueprint"
	"github.com/loom-dev/loom/orchestrator/canvas"
)

// DefaultPageSize is the page size of list RPCs when the request leaves it 0.
const DefaultPageSize = 50

// maxErrorsInMessage bounds how many validation errors an InvalidArgument message spells out; the error detail
// always carries all of them.
const maxErrorsInMessage = 20

// Server implements the OrchestratorService. It is safe for concurrent use.
type Server struct {
	errors    *rpcerr.Mapper
	agents    agentv1.AgentServiceClient // nil: estimates without agent budgets
	logger    *slog.Logger
	store     orchestrator.Store
	runs      orchestrator.Runs
	watchPoll time.Duration
	limits    blueprint.Limits // expression limits checked when a blueprint is saved or validated
}

// Option configures a Server.
type Option func(*Server)

// WithExpressionLimits sets the limits blueprint expressions are checked against when a blueprint is created,
// updated, validated or laid out inline; the zero Limits (the default) takes blueprint's defaults. The run engine
// must evaluate under the same limits.
func WithExpressionLimits(l blueprint.Limits) Option { return func(s *Server) { s.limits = l } }

// WithWatchPollInterval sets how often WatchRun looks for new events; the default is 250ms.
func WithWatchPollInterval(d time.Duration) Option { return func(s *Server) { s.watchPoll = d } }

// WithAgents gives EstimateRun the agent service's client, to read each agent step's configured budget (the
// bound when a blueprint has no history). Without it, estimates carry no budgets.
func WithAgents(c agentv1.AgentServiceClient) Option { return func(s *Server) { s.agents = c } }

var _ orchestratorv1connect.OrchestratorServiceHandler = (*Server)(nil)

// New returns a Server keeping blueprints in store and serving the run RPCs with runs (an *engine.Engine, which
// calls the agent and memory services); neither may be nil. A nil logger discards.
func New(logger *slog.Logger, store orchestrator.Store, runs orchestrator.Runs, opts ...Option) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{logger: logger, errors: newErrors(logger), store: store, runs: runs, watchPoll: 250 * time.Millisecond}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Service returns the service to mount on the RPC server.
func (s *Server) Service() rpcserver.Service {
	return rpcserver.Service{
		Name: orchestratorv1connect.OrchestratorServiceName,
		Handler: func(opts ...connect.HandlerOption) (string, http.Handler) {
			return orchestratorv1connect.NewOrchestratorServiceHandler(s, opts...)
		},
	}
}

// invalidBlueprintError carries every validation error of a rejected blueprint.
type invalidBlueprintError struct {
	errs []*orchestratorv1.ValidationError
}

func (e *invalidBlueprintError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid blueprint (%d errors): ", len(e.errs))
	for i, ve := range e.errs {
		if i == maxErrorsInMessage {
			fmt.Fprintf(&b, "; and %d more", len(e.errs)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		if ve.GetPath() != "" {
			b.WriteString(ve.GetPath())
			b.WriteString(": ")
		}
		b.WriteString(ve.GetMessage())
		if ve.GetLine() > 0 {
			fmt.Fprintf(&b, " (line %d, column %d)", ve.GetLine(), ve.GetColumn())
		}
	}
	return b.String()
}

// load turns a source into a valid blueprint, or returns an *invalidBlueprintError.
func (s *Server) load(src *orchestratorv1.BlueprintSource) (*orchestratorv1.Blueprint, error) {
	bp, errs := blueprint.LoadWith(src, s.limits)
	if len(errs) > 0 {
		return nil, &invalidBlueprintError{errs: errs}
	}
	return bp, nil
}

// CreateBlueprint stores version 1 of a blueprint.
func (s *Server) CreateBlueprint(ctx context.Context, req *connect.Request[orchestratorv1.CreateBlueprintRequest]) (*connect.Response[orchestratorv1.CreateBlueprintResponse], error) {
	t := principal.TenantOf(ctx)
	bp, err := s.load(req.Msg.GetSource())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	stored, err := s.store.CreateBlueprint(ctx, t, bp)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.CreateBlueprintResponse{Blueprint: stored}), nil
}

// GetBlueprint returns the latest or a given version of a blueprint.
func (s *Server) GetBlueprint(ctx context.Context, req *connect.Request[orchestratorv1.GetBlueprintRequest]) (*connect.Response[orchestratorv1.GetBlueprintResponse], error) {
	t := principal.TenantOf(ctx)
	bp, err := s.store.GetBlueprint(ctx, t, req.Msg.GetName(), req.Msg.GetVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.GetBlueprintResponse{Blueprint: bp}), nil
}

// ListBlueprints lists the latest versions of blueprints by name.
func (s *Server) ListBlueprints(ctx context.Context, req *connect.Request[orchestratorv1.ListBlueprintsRequest]) (*connect.Response[orchestratorv1.ListBlueprintsResponse], error) {
	t := principal.TenantOf(ctx)
	size := int(req.Msg.GetPageSize())
	if size <= 0 {
		size = DefaultPageSize
	}
	bps, next, err := s.store.ListBlueprints(ctx, t, size, req.Msg.GetPageToken())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.ListBlueprintsResponse{Blueprints: bps, NextPageToken: next}), nil
}

// UpdateBlueprint stores a new version of a blueprint.
func (s *Server) UpdateBlueprint(ctx context.Context, req *connect.Request[orchestratorv1.UpdateBlueprintRequest]) (*connect.Response[orchestratorv1.UpdateBlueprintResponse], error) {
	t := principal.TenantOf(ctx)
	bp, err := s.load(req.Msg.GetSource())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	if bp.GetName() != req.Msg.GetName() {
		return nil, s.connectError(ctx, &invalidBlueprintError{errs: []*orchestratorv1.ValidationError{{
			Path:    "name",
			Message: fmt.Sprintf("blueprint name %q does not match the name in the request %q", bp.GetName(), req.Msg.GetName()),
		}}})
	}
	stored, err := s.store.UpdateBlueprint(ctx, t, bp, req.Msg.GetExpectedVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.UpdateBlueprintResponse{Blueprint: stored}), nil
}

// DeleteBlueprint deletes a blueprint and its versions.
func (s *Server) DeleteBlueprint(ctx context.Context, req *connect.Request[orchestratorv1.DeleteBlueprintRequest]) (*connect.Response[orchestratorv1.DeleteBlueprintResponse], error) {
	t := principal.TenantOf(ctx)
	if err := s.store.DeleteBlueprint(ctx, t, req.Msg.GetName()); err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.DeleteBlueprintResponse{}), nil
}

// ValidateBlueprint reports every error of a blueprint without storing it. An invalid blueprint is a successful
// response with errors, not an RPC error.
func (s *Server) ValidateBlueprint(ctx context.Context, req *connect.Request[orchestratorv1.ValidateBlueprintRequest]) (*connect.Response[orchestratorv1.ValidateBlueprintResponse], error) {
	_, errs := blueprint.LoadWith(req.Msg.GetSource(), s.limits)
	return connect.NewResponse(&orchestratorv1.ValidateBlueprintResponse{Errors: errs}), nil
}

// GenerateCanvas lays out a stored or an inline blueprint. An invalid inline blueprint is InvalidArgument.
func (s *Server) GenerateCanvas(ctx context.Context, req *connect.Request[orchestratorv1.GenerateCanvasRequest]) (*connect.Response[orchestratorv1.GenerateCanvasResponse], error) {
	t := principal.TenantOf(ctx)
	var (
		bp  *orchestratorv1.Blueprint
		err error
	)
	switch target := req.Msg.GetTarget().(type) {
	case *orchestratorv1.GenerateCanvasRequest_Ref:
		bp, err = s.store.GetBlueprint(ctx, t, target.Ref.GetName(), target.Ref.GetVersion())
	case *orchestratorv1.GenerateCanvasRequest_Source:
		bp, err = s.load(target.Source)
	default:
		err = &invalidBlueprintError{errs: []*orchestratorv1.ValidationError{{Path: "target", Message: "a ref or a source is required"}}}
	}
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.GenerateCanvasResponse{Canvas: canvas.Generate(bp)}), nil
}

// StartRun starts a durable run of a stored blueprint version.
func (s *Server) StartRun(ctx context.Context, req *connect.Request[orchestratorv1.StartRunRequest]) (*connect.Response[orchestratorv1.StartRunResponse], error) {
	t := principal.TenantOf(ctx)
	bp, err := s.store.GetBlueprint(ctx, t, req.Msg.GetBlueprint(), req.Msg.GetVersion())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	run, err := s.runs.StartRun(ctx, t, bp, req.Msg.GetInput(), req.Msg.GetIdempotencyKey())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.StartRunResponse{Run: run}), nil
}

// GetRun returns a run with its steps.
func (s *Server) GetRun(ctx context.Context, req *connect.Request[orchestratorv1.GetRunRequest]) (*connect.Response[orchestratorv1.GetRunResponse], error) {
	t := principal.TenantOf(ctx)
	run, err := s.runs.GetRun(ctx, t, req.Msg.GetId())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.GetRunResponse{Run: run}), nil
}

// ListRuns lists runs, newest first, without their steps.
func (s *Server) ListRuns(ctx context.Context, req *connect.Request[orchestratorv1.ListRunsRequest]) (*connect.Response[orchestratorv1.ListRunsResponse], error) {
	t := principal.TenantOf(ctx)
	runs, next, err := s.runs.ListRuns(ctx, t, req.Msg.GetBlueprint(), req.Msg.GetState(), pageSize(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.ListRunsResponse{Runs: runs, NextPageToken: next}), nil
}

// CancelRun cancels a run.
func (s *Server) CancelRun(ctx context.Context, req *connect.Request[orchestratorv1.CancelRunRequest]) (*connect.Response[orchestratorv1.CancelRunResponse], error) {
	t := principal.TenantOf(ctx)
	run, err := s.runs.CancelRun(ctx, t, req.Msg.GetId(), req.Msg.GetReason())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.CancelRunResponse{Run: run}), nil
}

// DeleteRun deletes a finished run.
func (s *Server) DeleteRun(ctx context.Context, req *connect.Request[orchestratorv1.DeleteRunRequest]) (*connect.Response[orchestratorv1.DeleteRunResponse], error) {
	t := principal.TenantOf(ctx)
	if err := s.runs.DeleteRun(ctx, t, req.Msg.GetId()); err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.DeleteRunResponse{}), nil
}

// WatchRun sends the run's stored events after after_sequence, then follows new ones until the run has ended and
// every event has been sent, or the client goes away. Stored events are read again when this process commits
// some for the run, and every watch poll interval (runs executed by other replicas). Live AgentTextDelta events
// of a run this process executes are sent between the stored events they fall between: a delta carrying
// sequence S is sent once stored event S has been, and dropped if event S+1 already was; deltas are never
// replayed, so a resumed watch sees nothing twice.
func (s *Server) WatchRun(ctx context.Context, req *connect.Request[orchestratorv1.WatchRunRequest], stream *connect.ServerStream[orchestratorv1.WatchRunResponse]) error {
	t := principal.TenantOf(ctx)
	id := req.Msg.GetId()
	// Subscribed before the first read: a delta after any stored event read below is not missed.
	live := s.runs.Follow(t, id)
	defer live.Stop()
	after := req.Msg.GetAfterSequence()
	var pending []*orchestratorv1.WatchRunResponse // deltas whose stored predecessor is not sent yet
	poll := time.NewTimer(0)
	defer poll.Stop()
	read := true
	for {
		if read {
			events, ended, err := s.runs.Events(ctx, t, id, after, watchBatch)
			if err != nil {
				return s.connectError(ctx, err)
			}
			// Deltas are published before the commit of the event after them: once that event is read, they are
			// all in the channel.
			pending = drainDeltas(live.Deltas, pending)
			for _, ev := range events {
				if pending, err = sendDeltas(stream, pending, after); err != nil {
					return err
				}
				if err := stream.Send(ev); err != nil {
					return err
				}
				after = ev.GetSequence()
			}
			if len(events) == watchBatch {
				continue
			}
			if ended {
				return nil
			}
			poll.Reset(s.watchPoll)
		}
		var err error
		if pending, err = sendDeltas(stream, pending, after); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return s.connectError(ctx, ctx.Err())
		case <-poll.C:
			read = true
		case <-live.Changed:
			read = true
		case d := <-live.Deltas:
			pending = appendDelta(pending, d)
			read = d.GetSequence() > after // its predecessor is stored but not read yet
		}
	}
}

// sendDeltas sends the pending deltas that follow stored event after, drops those that came before it, and
// returns the rest (which follow events not sent yet).
func sendDeltas(stream *connect.ServerStream[orchestratorv1.WatchRunResponse], pending []*orchestratorv1.WatchRunResponse, after int64) ([]*orchestratorv1.WatchRunResponse, error) {
	n := 0
	for _, d := range pending {
		if d.GetSequence() > after {
			break
		}
		n++
		if d.GetSequence() == after {
			if err := stream.Send(d); err != nil {
				return nil, err
			}
		}
	}
	return pending[n:], nil
}

// drainDeltas appends the deltas waiting in c to pending.
func drainDeltas(c <-chan *orchestratorv1.WatchRunResponse, pending []*orchestratorv1.WatchRunResponse) []*orchestratorv1.WatchRunResponse {
	for {
		select {
		case d := <-c:
			pending = appendDelta(pending, d)
		default:
			return pending
		}
	}
}

// appendDelta appends d to pending, dropping the oldest beyond maxPendingDeltas.
func appendDelta(pending []*orchestratorv1.WatchRunResponse, d *orchestratorv1.WatchRunResponse) []*orchestratorv1.WatchRunResponse {
	if len(pending) == maxPendingDeltas {
		pending = pending[1:]
	}
	return append(pending, d)
}

// maxPendingDeltas bounds the live deltas a watch holds while it reads the stored events they follow.
const maxPendingDeltas = 1024

// watchBatch is how many events WatchRun reads at a time.
const watchBatch = 100

// ListPendingApprovals lists approval steps waiting for a person, oldest first.
func (s *Server) ListPendingApprovals(ctx context.Context, req *connect.Request[orchestratorv1.ListPendingApprovalsRequest]) (*connect.Response[orchestratorv1.ListPendingApprovalsResponse], error) {
	t := principal.TenantOf(ctx)
	approvals, next, err := s.runs.ListPendingApprovals(ctx, t, req.Msg.GetRunId(), pageSize(req.Msg.GetPageSize()), req.Msg.GetPageToken())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.ListPendingApprovalsResponse{Approvals: approvals, NextPageToken: next}), nil
}

// SubmitApproval approves or rejects a waiting approval step.
func (s *Server) SubmitApproval(ctx context.Context, req *connect.Request[orchestratorv1.SubmitApprovalRequest]) (*connect.Response[orchestratorv1.SubmitApprovalResponse], error) {
	t := principal.TenantOf(ctx)
	m := req.Msg
	run, err := s.runs.SubmitApproval(ctx, t, m.GetRunId(), m.GetStepId(), m.GetDecision(), m.GetPayload(), m.GetComment())
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&orchestratorv1.SubmitApprovalResponse{Run: run}), nil
}

func pageSize(n int32) int {
	if n <= 0 {
		return DefaultPageSize
	}
	return int(n)
}

// connectError maps an error to a connect error through the shared mapping (internal/rpcerr); the orchestrator
// adds only an invalid blueprint (InvalidArgument with every validation error as a detail) and a bad page token.
func (s *Server) connectError(ctx context.Context, err error) error {
	return s.errors.Error(ctx, "", err)
}

func newErrors(logger *slog.Logger) *rpcerr.Mapper {
	return &rpcerr.Mapper{Logger: logger, Service: "orchestrator", Rules: []rpcerr.Rule{
		func(_ context.Context, err error) *connect.Error {
			var invalid *invalidBlueprintError
			if !errors.As(err, &invalid) {
				return nil
			}
			ce := connect.NewError(connect.CodeInvalidArgument, invalid)
			if detail, derr := connect.NewErrorDetail(&orchestratorv1.ValidateBlueprintResponse{Errors: invalid.errs}); derr == nil {
				ce.AddDetail(detail)
			}
			return ce
		},
		rpcerr.Is(orchestrator.ErrInvalidPageToken, connect.CodeInvalidArgument),
	}}
}
