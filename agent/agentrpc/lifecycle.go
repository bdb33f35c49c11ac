package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/principal"
)

// Runs cut off by a crash. A run is leased to the process executing it (Server.instance) for Config.RunLease;
// Maintain renews the leases of this process's runs and fails every RUNNING run whose lease ended, on any
// replica. So a run is never left RUNNING for longer than about a lease after its process died.

const (
	defaultRunLease = 30 * time.Second
	// InterruptedReason is the error of a run marked FAILED because the process executing it stopped (a crash,
	// a kill, a lost database) before it finished. The run's tool calls may have happened; a caller that retries
	// with a new idempotency key runs the agent again.
	InterruptedReason = "interrupted: the agent service executing this run stopped before it finished (crash or restart)"
)

// Maintain keeps this process's runs leased and fails runs cut off by a crash, until ctx ends: at once, then
// every third of a lease. Run it in one goroutine per Server; it returns ctx's error.
func (s *Server) Maintain(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.RunLease / 3)
	defer tick.Stop()
	for {
		s.maintainOnce(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (s *Server) maintainOnce(ctx context.Context) {
	now := time.Now()
	if _, err := s.store.RenewLeases(ctx, s.instance, now.Add(s.cfg.RunLease)); err != nil && ctx.Err() == nil {
		s.logger.WarnContext(ctx, "agent: renew run leases", "err", err)
	}
	if _, err := s.RecoverRuns(ctx); err != nil && ctx.Err() == nil {
		s.logger.WarnContext(ctx, "agent: recover interrupted runs", "err", err)
	}
	if _, err := s.ExpireWaits(ctx); err != nil && ctx.Err() == nil {
		s.logger.WarnContext(ctx, "agent: fail runs past their client tool wait deadline", "err", err)
	}
}

// RecoverRuns marks FAILED, with InterruptedReason, every RUNNING run whose lease has ended, and returns how many
// there were. Maintain calls it; it is exported for startup and tests.
func (s *Server) RecoverRuns(ctx context.Context) (int64, error) {
	n, err := s.store.FailExpiredRuns(ctx, time.Now(), InterruptedReason)
	if n > 0 {
		s.logger.WarnContext(ctx, "agent: runs cut off by a crash marked failed", "runs", n)
	}
	return n, err
}

// lease is the claim this process puts on a run it starts now.
func (s *Server) lease() agent.Lease {
	return agent.Lease{Owner: s.instance, Until: time.Now().Add(s.cfg.RunLease)}
}

// DeleteRun implements agentv1connect.AgentServiceHandler.
func (s *Server) DeleteRun(ctx context.Context, req *connect.Request[agentv1.DeleteRunRequest]) (*connect.Response[agentv1.DeleteRunResponse], error) {
	tenant := principal.TenantOf(ctx)
	id := req.Msg.GetId()
	if s.active(tenant, id) != nil {
		return nil, s.connectError(ctx, agent.PreconditionError(fmt.Sprintf("run %s is running: cancel it first", id)))
	}
	if err := s.store.DeleteRun(ctx, tenant, id); err != nil {
		return nil, s.connectError(ctx, err)
	}
	return connect.NewResponse(&agentv1.DeleteRunResponse{}), nil
}

// waitStored waits for a run recorded as RUNNING that does not execute in this process (another replica runs
// it, or its process crashed and Maintain will fail it) to finish, polling the store, until ctx ends.
func (s *Server) waitStored(ctx context.Context, tenant string, run *agentv1.Run) (*agentv1.Run, error) {
	delay := 50 * time.Millisecond
	for run.GetState() == agentv1.RunState_RUN_STATE_RUNNING {
		if ar := s.active(tenant, run.GetId()); ar != nil {
			select {
			case <-ar.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		} else {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
			delay = min(2*delay, time.Second)
		}
		var err error
		if run, err = s.store.GetRun(ctx, tenant, run.GetId()); err != nil {
			if errors.Is(err, agent.ErrNotFound) {
				return nil, fmt.Errorf("run was deleted while it ran: %w", agent.ErrNotFound)
			}
			return nil, err
		}
	}
	return run, nil
}
