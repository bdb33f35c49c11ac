package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// Runs waiting for client tool results: runs.state is RUN_STATE_WAITING_FOR_TOOLS (no lease), and run_waits holds
// the saved state until the run resumes, ends or its deadline passes.

const (
	stateRunning = int64(agentv1.RunState_RUN_STATE_RUNNING)
	stateWaiting = int64(agentv1.RunState_RUN_STATE_WAITING_FOR_TOOLS)
	stateFailed  = int64(agentv1.RunState_RUN_STATE_FAILED)
)

// WaitRun implements agent.Store.
func (s *Store) WaitRun(ctx context.Context, tenant string, r *agentv1.Run, w agent.Wait) error {
	detail, own, usage, err := encodeRun(r)
	if err != nil {
		return fmt.Errorf("wait run: %w", err)
	}
	return s.inTx(ctx, "wait run", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE loom.runs SET state = ?, detail = ?, input_tokens = ?, output_tokens = ?,
			cached_tokens = ?, cost_nanos = ?, cost_unknown = ?, price_version = ?, usage = ?, owner = '', lease_until = 0
			WHERE tenant = ? AND id = ? AND state = ?`),
			stateWaiting, detail, own.InputTokens, own.OutputTokens, own.CachedInputTokens, int64(own.Cost),
			boolInt(own.CostUnknown), r.GetUsage().GetPriceVersion(), usage, tenant, r.GetId(), stateRunning)
		if err != nil {
			return err
		}
		if err := s.oneRow(ctx, tx, res, tenant, r.GetId(), "is not running"); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q("INSERT INTO loom.run_waits (tenant, run_id, deadline, version, state) VALUES (?, ?, ?, 1, ?)"),
			tenant, r.GetId(), w.Deadline.UnixNano(), w.State)
		return err
	})
}

// GetWait implements agent.Store.
func (s *Store) GetWait(ctx context.Context, tenant, id string) (agent.Wait, error) {
	var (
		w        agent.Wait
		deadline int64
	)
	err := s.db.QueryRowContext(ctx, s.q("SELECT deadline, version, state FROM loom.run_waits WHERE tenant = ? AND run_id = ?"),
		tenant, id).Scan(&deadline, &w.Version, &w.State)
	if errors.Is(err, sql.ErrNoRows) {
		return agent.Wait{}, fmt.Errorf("waiting run %q: %w", id, agent.ErrNotFound)
	}
	if err != nil {
		return agent.Wait{}, fmt.Errorf("get wait: %w", err)
	}
	w.Deadline = time.Unix(0, deadline).UTC()
	return w, nil
}

// UpdateWait implements agent.Store.
func (s *Store) UpdateWait(ctx context.Context, tenant string, r *agentv1.Run, w agent.Wait) error {
	detail, err := encodeDetail(r)
	if err != nil {
		return fmt.Errorf("update wait: %w", err)
	}
	return s.inTx(ctx, "update wait", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("UPDATE loom.run_waits SET state = ?, version = version + 1 WHERE tenant = ? AND run_id = ? AND version = ?"),
			w.State, tenant, r.GetId(), w.Version)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return fmt.Errorf("waiting run %s changed since version %d: %w", r.GetId(), w.Version, agent.ErrConflict)
		}
		_, err = tx.ExecContext(ctx, s.q("UPDATE loom.runs SET detail = ? WHERE tenant = ? AND id = ? AND state = ?"),
			detail, tenant, r.GetId(), stateWaiting)
		return err
	})
}

// ResumeRun implements agent.Store.
func (s *Store) ResumeRun(ctx context.Context, tenant, id string, version int64, lease agent.Lease) error {
	return s.inTx(ctx, "resume run", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("DELETE FROM loom.run_waits WHERE tenant = ? AND run_id = ? AND version = ?"), tenant, id, version)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return fmt.Errorf("waiting run %s at version %d: %w", id, version, agent.ErrConflict)
		}
		res, err = tx.ExecContext(ctx, s.q("UPDATE loom.runs SET state = ?, owner = ?, lease_until = ? WHERE tenant = ? AND id = ? AND state = ?"),
			stateRunning, lease.Owner, lease.Until.UnixNano(), tenant, id, stateWaiting)
		if err != nil {
			return err
		}
		return s.oneRow(ctx, tx, res, tenant, id, "is not waiting")
	})
}

// FinishWait implements agent.Store.
func (s *Store) FinishWait(ctx context.Context, tenant string, r *agentv1.Run) error {
	detail, err := encodeDetail(r)
	if err != nil {
		return fmt.Errorf("finish wait: %w", err)
	}
	return s.inTx(ctx, "finish wait", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("UPDATE loom.runs SET state = ?, output = ?, error = ?, detail = ?, end_time = ? WHERE tenant = ? AND id = ? AND state = ?"),
			int64(r.GetState()), r.GetOutput(), r.GetError(), detail, tsNanos(r.GetEndTime()), tenant, r.GetId(), stateWaiting)
		if err != nil {
			return err
		}
		if err := s.oneRow(ctx, tx, res, tenant, r.GetId(), "is not waiting"); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q("DELETE FROM loom.run_waits WHERE tenant = ? AND run_id = ?"), tenant, r.GetId())
		return err
	})
}

// FailExpiredWaits implements agent.Store.
func (s *Store) FailExpiredWaits(ctx context.Context, now time.Time, reason string) (int64, error) {
	var n int64
	err := s.inTx(ctx, "fail expired waits", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE loom.runs SET state = ?, error = ?, end_time = ?
			WHERE state = ? AND EXISTS (SELECT 1 FROM loom.run_waits w WHERE w.tenant = runs.tenant AND w.run_id = runs.id AND w.deadline < ?)`),
			stateFailed, reason, now.UnixNano(), stateWaiting, now.UnixNano())
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q("DELETE FROM loom.run_waits WHERE deadline < ?"), now.UnixNano())
		return err
	})
	return n, err
}

// inTx runs fn in a transaction; errors other than the agent's sentinels are wrapped with op.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		if errors.Is(err, agent.ErrConflict) || errors.Is(err, agent.ErrNotFound) {
			return err
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// oneRow checks that res changed the run: ErrNotFound when it does not exist, ErrConflict (with why) when it is
// in another state.
func (s *Store) oneRow(ctx context.Context, tx *sql.Tx, res sql.Result, tenant, id, why string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 1 {
		return nil
	}
	var one int
	err = tx.QueryRowContext(ctx, s.q("SELECT 1 FROM loom.runs WHERE tenant = ? AND id = ?"), tenant, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("run %q: %w", id, agent.ErrNotFound)
	}
	return fmt.Errorf("run %s %s: %w", id, why, agent.ErrConflict)
}
