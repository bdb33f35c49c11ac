package agentrpc

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// The run record, written while the run starts. A run is stored (CreateRun) before anything it does can outlive a
// crash, but not before everything it does: the first model call does not wait for the commit.
//
//   - A run with an idempotency key is recorded before its first event: the key's uniqueness decides which of two
//     concurrent callers runs it, and the loser must not stream a run of its own.
//   - A run without one is recorded in parallel with its memory retrieval and first model call, which change
//     nothing outside the run. Its first event waits for nothing; its first tool call (a tool may have effects:
//     a webhook, a memory save, a delegated run) waits for the record, and so do its final write, GetRun and
//     CancelRun of it in this process.
//
// A crash before the record commits leaves no trace of the run: no tool of it had run, and nobody holds an
// idempotency key to come back with; its caller saw its stream break, and the model call's tokens, if any were
// spent, are not in the usage roll-ups. A crash after it is recovered as before: the run stays RUNNING under this
// process's lease until Maintain marks it FAILED (InterruptedReason). A record that fails to commit fails the run
// (the call answers the store's error) and stops it before any tool call.
//
// A run that ends before its background write has begun (no tool call waited for it: a short run while the
// store is busy with other runs' writes) is written once, finished, by its final write instead: one commit for
// the run instead of two.
// errNotRecorded wraps the store's error of a run record that failed to commit.
var errNotRecorded = errors.New("record run")

type runRecord struct {
	done chan struct{} // closed once the run is recorded (or failed to be); err is set before
	err  error

	mu    sync.Mutex
	begun bool // the background write has begun
	taken bool // the final write took the record over: the background write does nothing
}

// recordRun stores run, at once when it has an idempotency key, otherwise in the background from a copy (the
// caller goes on changing run). It fails only in the first case; otherwise wait reports the outcome.
func (s *Server) recordRun(ctx context.Context, tenant string, run *agentv1.Run) (*runRecord, error) {
	rec := &runRecord{done: make(chan struct{})}
	lease := s.lease()
	if run.GetIdempotencyKey() != "" {
		rec.err = s.store.CreateRun(ctx, tenant, run, lease)
		close(rec.done)
		return rec, rec.err
	}
	snapshot := proto.CloneOf(run)
	go func() {
		rec.mu.Lock()
		if rec.taken {
			rec.mu.Unlock()
			return
		}
		rec.begun = true
		rec.mu.Unlock()
		defer close(rec.done)
		// The caller's cancellation does not stop the record: the run's final write (CANCELLED) needs it.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
		defer cancel()
		if err := s.store.CreateRun(wctx, tenant, snapshot, lease); err != nil {
			rec.err = fmt.Errorf("%w: %w", errNotRecorded, err)
		}
	}()
	return rec, nil
}

// finish stores run's final state: in one write of the whole run when its background write has not begun,
// otherwise, once that write is done, with FinishRun. A nil record is a run stored before this execution (one
// resumed after waiting for client tools).
func (s *Server) finish(ctx context.Context, tenant string, rec *runRecord, run *agentv1.Run) error {
	if rec == nil {
		return s.store.FinishRun(ctx, tenant, run)
	}
	rec.mu.Lock()
	take := !rec.begun && !rec.taken && run.GetIdempotencyKey() == ""
	rec.taken = rec.taken || take
	rec.mu.Unlock()
	if take {
		err := s.store.CreateRun(ctx, tenant, run, s.lease())
		if err != nil {
			rec.err = fmt.Errorf("%w: %w", errNotRecorded, err)
		}
		close(rec.done)
		return rec.err
	}
	if err := rec.wait(ctx); err != nil {
		return err
	}
	return s.store.FinishRun(ctx, tenant, run)
}

// wait returns once the record is written, with the write's error, or ctx's cause when ctx ends first. A nil
// record is written.
func (r *runRecord) wait(ctx context.Context) error {
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
