package engine

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/structpb"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/telemetry"
)

// claimBatch is the most runs one claim takes.
const claimBatch = 100

// errFenced: the run changed under its owner (another writer, or another owner after a lapsed lease).
var errFenced = errors.New("run changed under its owner")

// accepting reports whether this process executes new runs itself.
func (e *Engine) accepting() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.started && !e.stopped && len(e.owned) < e.cfg.MaxRuns
}

// signal wakes the claim loop.
func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// poke tells the owner of run id in this process that the run changed in the database; without one, it wakes
// the claim loop (an approved run is due).
func (e *Engine) poke(id string) {
	e.mu.Lock()
	o := e.owned[id]
	e.mu.Unlock()
	if o == nil {
		e.signal()
		return
	}
	select {
	case o.reload <- struct{}{}:
	default:
	}
}

// ownedRun is a run this replica owns: one goroutine (loop) changes it; its steps run in goroutines of their own
// and report to inbox.
type ownedRun struct {
	e  *Engine
	id string
	r  *run // nil until loaded

	ctx      context.Context // of the run's steps; cancelled when the owner lets go
	cancel   context.CancelFunc
	inbox    chan result
	reload   chan struct{}
	done     chan struct{}
	inflight map[string]context.CancelFunc
	saved    atomic.Int64 // r.savedSeq, for the heartbeat
	timer    *time.Timer
}

// result is the outcome of one step attempt.
type result struct {
	step string
	out  *structpb.Value
	err  error
	// usage is what the attempt's agent runs used and cost, also when it failed; nil for none.
	usage *orchestratorv1.Usage
}

// adopt starts owning r (just created by this process, already committed with this replica as owner).
func (e *Engine) adopt(r *run) { e.own(r.id, r) }

// own starts the owner goroutine of run id; r is nil when the run must be loaded first. It does nothing when the
// run is already owned here or the engine is stopping.
func (e *Engine) own(id string, r *run) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || e.owned[id] != nil {
		return
	}
	ctx, cancel := context.WithCancel(e.base)
	o := &ownedRun{e: e, id: id, r: r, ctx: ctx, cancel: cancel, inbox: make(chan result), reload: make(chan struct{}, 1),
		done: make(chan struct{}), inflight: map[string]context.CancelFunc{}}
	if r != nil {
		o.saved.Store(r.savedSeq)
	}
	e.owned[id] = o
	e.actors.Add(1)
	go o.loop()
}

func (o *ownedRun) loop() {
	e := o.e
	defer func() {
		o.cancel()
		close(o.done)
		e.mu.Lock()
		delete(e.owned, o.id)
		e.mu.Unlock()
		e.actors.Done()
		e.signal() // capacity freed
	}()
	if o.r == nil && !o.load() {
		return
	}
	if !o.settle(nil) {
		return
	}
	for {
		var due <-chan time.Time
		if o.timer != nil {
			due = o.timer.C
		}
		select {
		case res := <-o.inbox:
			if !o.settle(o.gather(res)) {
				return
			}
		case <-o.reload:
			if !o.load() || !o.settle(nil) {
				return
			}
		case <-due:
			o.timer = nil
			if !o.settle(nil) {
				return
			}
		case <-e.draining:
			if len(o.inflight) == 0 {
				return
			}
			// Wait for the steps in flight: their outcomes are still recorded.
			select {
			case res := <-o.inbox:
				if !o.settle([]result{res}) {
					return
				}
			case <-o.ctx.Done():
				return
			}
		case <-o.ctx.Done():
			return
		}
	}
}

// lingerGap and lingerMax bound how long the owner waits for more outcomes of steps still in flight before it
// commits the ones it has: it commits once no outcome came for lingerGap, or after lingerMax. A lone step (a
// sequential chain) never waits; the members of a parallel block or the items of a fan-out that finish
// together share one commit instead of spreading over several (a commit costs 0.3-0.5 ms, more than the gap).
const (
	lingerGap = 100 * time.Microsecond
	lingerMax = time.Millisecond
)

// gather returns res with the outcomes already waiting, and those of the other steps in flight that arrive
// within the linger bounds.
func (o *ownedRun) gather(res result) []result {
	batch := []result{res}
	drain := func() {
		for {
			select {
			case res := <-o.inbox:
				batch = append(batch, res)
			default:
				return
			}
		}
	}
	drain()
	if len(o.inflight) <= len(batch) {
		return batch // nothing else is running
	}
	start := time.Now()
	t := time.NewTimer(lingerGap)
	defer t.Stop()
	for len(o.inflight) > len(batch) {
		select {
		case res := <-o.inbox:
			batch = append(batch, res)
			drain()
			if time.Since(start) >= lingerMax {
				return batch
			}
			t.Reset(lingerGap)
		case <-t.C:
			return batch
		}
	}
	return batch
}

// load reads the run from the database. It reports false (let go) when the run ended, is gone, or has another
// owner now.
func (o *ownedRun) load() bool {
	ctx := context.WithoutCancel(o.ctx)
	for attempt := 0; ; attempt++ {
		r, err := loadRun(ctx, o.e.reader(), "", o.id, false)
		if errors.Is(err, errNoRows) || errors.Is(err, errCorrupt) {
			if err != nil && !errors.Is(err, errNoRows) {
				o.e.logger.ErrorContext(ctx, "engine: cannot load run", slog.String("run", o.id), slog.Any("error", err))
			}
			return false
		}
		if err == nil {
			if r.terminal() || r.leaseOwner != o.e.id {
				return false
			}
			for _, s := range r.steps {
				// A running step not in flight here was cut short (or never started): its attempt is recorded again.
				if s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && o.inflight[s.id] == nil && hasWork(s.def) {
					s.needsAttempt = true
					if prev := o.r; prev != nil && prev.byID[s.id] != nil {
						// Reloaded under the same owner: an attempt it recorded and committed (the same count is
						// in the database) is not recorded again.
						p := prev.byID[s.id]
						if !p.needsAttempt && p.state == s.state && p.attempts == s.attempts {
							s.needsAttempt = false
						}
					}
				}
			}
			o.r = r
			o.saved.Store(r.savedSeq)
			return true
		}
		o.e.logger.WarnContext(ctx, "engine: load run", slog.String("run", o.id), slog.Any("error", err))
		if !o.sleep(attempt) {
			return false
		}
	}
}

// sleep backs off after a database error; false when the owner must let go.
func (o *ownedRun) sleep(attempt int) bool {
	select {
	case <-time.After(min(50*time.Millisecond<<min(attempt, 5), time.Second)):
		return true
	case <-o.ctx.Done():
		return false
	}
}

// settle applies step results, fires due timers, advances the run, commits what changed and starts the steps
// that are due. It reports false when the owner lets go of the run (it ended, was released, or is owned by
// another replica now).
func (o *ownedRun) settle(results []result) bool {
	e := o.e
	ctx := context.WithoutCancel(o.ctx)
	for _, res := range results {
		delete(o.inflight, res.step)
	}
	for attempt := 0; ; attempt++ {
		now := e.now()
		r := o.r
		for _, res := range results {
			e.applyResult(r, res, now)
		}
		e.fireTimers(r, now)
		if !r.terminal() {
			e.advance(r, now)
		}
		if !r.terminal() {
			e.recordAttempts(r, now)
		}
		next := o.nextDue(r)
		release := !r.terminal() && len(o.inflight) == 0 && !o.launchable(r, now) && next.Sub(now) > e.cfg.LeaseDuration
		draining := false
		select {
		case <-e.draining:
			draining = true
		default:
		}
		if release || r.terminal() || len(r.events) > 0 || o.anyDirty(r) {
			err := o.commit(ctx, r, release, next, now)
			if err != nil {
				if !errors.Is(err, errFenced) {
					e.logger.WarnContext(ctx, "engine: commit run", slog.String("run", o.id), slog.Any("error", err))
					if !o.sleep(attempt) {
						return false
					}
				}
				// Start again from what the database holds, and apply the results to it.
				if !o.load() {
					return false
				}
				continue
			}
			if r.terminal() {
				e.cfg.Metrics.runFinished(r.state) // the fence let only this write end the run
				e.flagAnomaly(ctx, r)
			}
		}
		if r.terminal() || release {
			return false
		}
		if !draining {
			o.launch(r, now)
		}
		o.arm(r, now)
		return true
	}
}

func (o *ownedRun) anyDirty(r *run) bool {
	for _, s := range r.steps {
		if s.dirty {
			return true
		}
	}
	return false
}

// commit writes r's changes through the group committer, fenced on this replica owning the run at the sequence
// last written; release gives the run up until next.
func (o *ownedRun) commit(ctx context.Context, r *run, release bool, next, now time.Time) error {
	e := o.e
	stmts, err := r.changes(e.db.Dialect)
	if err != nil {
		return err
	}
	out, err := marshal(r.output)
	if err != nil {
		return err
	}
	// The lease columns are written only to release the run (the heartbeat renews the lease): an UPDATE that
	// leaves them out leaves their index alone, which is a page less per commit.
	set, args := `state = ?, output = ?, error = ?, end_time = ?, last_sequence = ?`, []any{int64(r.state), out, r.err, r.ended, r.lastSeq}
	if release {
		set += `, owner = '', lease_until = 0, due_time = ?`
		args = append(args, next.UnixMicro())
	}
	req := &commitReq{
		runID: r.id,
		fence: stmt{`UPDATE loom.runs SET ` + set + ` WHERE id = ? AND owner = ? AND last_sequence = ? AND end_time = 0`,
			append(args, r.id, e.id, r.savedSeq)},
		stmts: stmts,
		done:  make(chan error, 1),
	}
	if err := e.commit(ctx, req); err != nil {
		return err
	}
	r.savedSeq = r.lastSeq
	o.saved.Store(r.savedSeq)
	e.live.committed(r.tenant, r.id)
	return nil
}

// launchable reports whether a step is due to start now.
func (o *ownedRun) launchable(r *run, now time.Time) bool {
	for _, s := range r.steps {
		if o.startable(s, now) {
			return true
		}
	}
	return false
}

func (o *ownedRun) startable(s *step, now time.Time) bool {
	return s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && hasWork(s.def) && o.inflight[s.id] == nil &&
		!s.needsAttempt && s.deadline <= now.UnixMicro()
}

// launch starts every step that is due, each in a goroutine of its own. With tracing on, each attempt is a span
// in the run's stored trace context, from its launch (the wait for a worker included) to its outcome.
func (o *ownedRun) launch(r *run, now time.Time) {
	e := o.e
	for _, s := range r.steps {
		if !o.startable(s, now) {
			continue
		}
		call, err := e.prepare(r, s, &o.saved)
		kind := stepKind(s.def)
		timeout := durationOr(s.def.GetTimeout(), defaultStepTimeout)
		ctx, cancel := context.WithTimeout(o.ctx, timeout)
		var span trace.Span
		if tp := e.cfg.TracerProvider; tp != nil {
			ctx, span = telemetry.StartSpan(telemetry.Extract(ctx, r.traceCarrier()), tp, "step "+kind,
				attribute.String("loom.run.id", r.id), attribute.String("loom.step.id", s.id),
				attribute.Int64("loom.step.attempt", s.attempts))
		}
		o.inflight[s.id] = cancel
		go func(id string) {
			defer cancel()
			var (
				out   *structpb.Value
				usage *orchestratorv1.Usage
			)
			if err == nil {
				select {
				case e.sem <- struct{}{}:
					start := time.Now()
					out, usage, err = call(ctx)
					e.cfg.Metrics.stepDone(kind, time.Since(start))
					<-e.sem
				case <-ctx.Done():
					err = ctx.Err()
				}
			}
			if span != nil {
				if err != nil {
					span.RecordError(err)
					span.SetStatus(codes.Error, err.Error())
				}
				span.End()
			}
			select {
			case o.inbox <- result{step: id, out: out, err: err, usage: usage}:
			case <-o.done:
			}
		}(s.id)
	}
}

// nextDue is when the run next needs its owner without a step finishing: a delay's end, a retry's backoff, an
// approval's deadline, or the run's deadline.
func (o *ownedRun) nextDue(r *run) time.Time {
	next := time.UnixMicro(r.created).Add(durationOr(r.bp.GetRunDeadline(), defaultRunDeadline))
	for _, s := range r.steps {
		switch {
		case s.state == orchestratorv1.StepState_STEP_STATE_WAITING,
			s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && (s.def.GetDelay() != nil || s.needsAttempt):
			if t := time.UnixMicro(s.deadline); t.Before(next) {
				next = t
			}
		}
	}
	return next
}

// arm sets the timer for nextDue.
func (o *ownedRun) arm(r *run, now time.Time) {
	if o.timer != nil {
		o.timer.Stop()
	}
	o.timer = time.NewTimer(max(o.nextDue(r).Sub(now), 0))
}

// commitReq is one owner's commit: the fenced run-row update, then the rest.
type commitReq struct {
	runID string
	fence stmt
	stmts []stmt
	done  chan error
}

// commit writes req in a group commit and returns its outcome. The first owner to arrive while fewer than
// maxCommitters transactions are open leads: it writes every commit waiting at that moment (its own included) in
// one transaction, then the ones that queued meanwhile; the others wait for their outcome. Concurrent runs so
// share the cost of a durable commit, and a lone run pays one commit with no goroutine hand-off.
func (e *Engine) commit(ctx context.Context, req *commitReq) error {
	e.commitMu.Lock()
	e.queue = append(e.queue, req)
	if e.committing >= e.maxCommitters {
		e.commitMu.Unlock()
		select {
		case err := <-req.done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.committing++
	for len(e.queue) > 0 {
		e.commitNext()
		if len(req.done) > 0 {
			break // ours is written: let the next owner lead
		}
	}
	e.committing--
	if len(e.queue) > 0 && e.committing == 0 {
		// Hand the rest to a leader of their own (rare: only when this one stopped early above).
		go e.drainQueue()
	}
	e.commitMu.Unlock()
	return <-req.done
}

// commitNext writes the next batch of up to 256 queued commits. It is called with e.commitMu held and returns
// with it held, releasing it while the batch is written.
func (e *Engine) commitNext() {
	n := min(len(e.queue), 256)
	batch := e.queue[:n:n]
	e.queue = e.queue[n:]
	e.commitMu.Unlock()
	e.commitBatch(batch)
	e.commitMu.Lock()
}

// drainQueue writes the commits left queued when their leader returned.
func (e *Engine) drainQueue() {
	e.commitMu.Lock()
	if e.committing >= e.maxCommitters {
		e.commitMu.Unlock()
		return
	}
	e.committing++
	for len(e.queue) > 0 {
		e.commitNext()
	}
	e.committing--
	e.commitMu.Unlock()
}

func (e *Engine) commitBatch(batch []*commitReq) {
	ctx := context.Background()
	// Rows are locked in id order (the heartbeat's order too), so two transactions never wait on each other.
	slices.SortFunc(batch, func(a, b *commitReq) int { return strings.Compare(a.runID, b.runID) })
	if e.db.Dialect == sqldb.SQLite {
		var queries []string
		for _, req := range batch {
			queries = append(queries, req.fence.query)
			for _, st := range req.stmts {
				queries = append(queries, st.query)
			}
		}
		e.stmts.prepare(ctx, e.db, queries)
	}
	results := make([]error, len(batch))
	err := e.inTx(ctx, func(tx *txn) error {
		if len(batch) == 1 && tx.pg != nil {
			// One round trip for the whole commit; a fenced one rolls back.
			n, err := tx.execFirst(ctx, append([]stmt{batch[0].fence}, batch[0].stmts...))
			if err == nil && n == 0 {
				return errFenced
			}
			return err
		}
		// Two round trips for the batch: every fence, then the rest of the commits whose fence held.
		fences := make([]stmt, len(batch))
		for i, req := range batch {
			fences[i] = req.fence
		}
		counts, err := tx.execCounts(ctx, fences)
		if err != nil {
			return err
		}
		var rest []stmt
		for i, req := range batch {
			if counts[i] == 0 {
				results[i] = errFenced
				continue
			}
			rest = append(rest, req.stmts...)
		}
		return tx.execAll(ctx, rest)
	})
	if err != nil && len(batch) > 1 {
		// One bad commit must not fail the others: write each on its own.
		for _, req := range batch {
			e.commitBatch([]*commitReq{req})
		}
		return
	}
	for i, req := range batch {
		if err != nil {
			req.done <- err
		} else {
			req.done <- results[i]
		}
	}
}

// claimLoop claims due runs whose lease has lapsed, whenever woken and every FetchPollInterval.
func (e *Engine) claimLoop(ctx context.Context) {
	defer e.loops.Done()
	// Embedded SQLite serves one process: whoever starts takes over every unfinished run at once.
	takeOver := e.db.Dialect == sqldb.SQLite
	tick := time.NewTicker(e.cfg.FetchPollInterval)
	defer tick.Stop()
	for {
		n, err := e.claim(ctx, takeOver)
		if err != nil && ctx.Err() == nil {
			e.logger.WarnContext(ctx, "engine: claim runs", slog.Any("error", err))
		} else {
			takeOver = false
		}
		if n == claimBatch {
			continue // more may be waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-e.draining:
			return
		case <-e.wake:
		case <-tick.C:
		}
	}
}

// claim takes up to claimBatch due runs nobody holds a live lease on, reads them and their steps (two queries
// for the batch), and starts owning them.
func (e *Engine) claim(ctx context.Context, takeOver bool) (int, error) {
	e.mu.Lock()
	room := e.cfg.MaxRuns - len(e.owned)
	e.mu.Unlock()
	if room <= 0 {
		return 0, nil
	}
	now := e.now()
	leased := ` AND lease_until < ?`
	args := []any{e.id, now.Add(e.cfg.LeaseDuration).UnixMicro(), now.UnixMicro()}
	if takeOver {
		leased = ""
	} else {
		args = append(args, now.UnixMicro())
	}
	lock := ""
	if e.db.Dialect == sqldb.Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	args = append(args, min(room, claimBatch))
	q := e.writer()
	rs, done, err := q.query(ctx, `UPDATE loom.runs SET owner = ?, lease_until = ? WHERE id IN (
		SELECT id FROM loom.runs WHERE end_time = 0 AND due_time <= ?`+leased+` ORDER BY due_time LIMIT ?`+lock+`) RETURNING `+runColumns, args...)
	if err != nil {
		return 0, err
	}
	runs := map[string]*run{}
	var corrupt []string
	for rs.Next() {
		r, err := scanRun(rs)
		if errors.Is(err, errCorrupt) {
			e.logger.ErrorContext(ctx, "engine: a stored run does not decode; it is parked (DeleteRun removes it)", slog.String("run", r.id), slog.Any("error", err))
			corrupt = append(corrupt, r.id)
			continue
		}
		if err != nil {
			done()
			return 0, err
		}
		runs[r.id] = r
	}
	err = rs.Err()
	done()
	if err != nil {
		return 0, err
	}
	for _, id := range corrupt {
		if _, err := q.exec(ctx, `UPDATE loom.runs SET owner = '', lease_until = 0, due_time = ? WHERE id = ?`, int64(1)<<62, id); err != nil {
			return 0, err
		}
	}
	n := len(runs) + len(corrupt)
	if len(runs) == 0 {
		return n, nil
	}
	ids := make([]any, 0, len(runs))
	marks := make([]byte, 0, 2*len(runs))
	for id := range runs {
		ids = append(ids, id)
		if len(marks) > 0 {
			marks = append(marks, ',')
		}
		marks = append(marks, '?')
	}
	srs, sdone, err := e.reader().query(ctx, `SELECT `+stepColumns+` FROM loom.run_steps WHERE run_id IN (`+string(marks)+`) ORDER BY run_id, position`, ids...)
	if err == nil {
		err = scanSteps(srs, runs)
		sdone()
	}
	if err != nil {
		// Let each owner read its own run (and report the one that does not decode).
		for id := range runs {
			e.own(id, nil)
		}
		return n, nil
	}
	for id, r := range runs {
		for _, s := range r.steps {
			// A running step was cut short (or never started here): its attempt is recorded again.
			if s.state == orchestratorv1.StepState_STEP_STATE_RUNNING && hasWork(s.def) {
				s.needsAttempt = true
			}
		}
		e.own(id, r)
	}
	return n, nil
}

// heartbeatLoop renews this replica's leases every third of LeaseDuration, and tells each owner whose run
// changed in the database (cancelled, approved, or taken by another replica) to reload it.
func (e *Engine) heartbeatLoop(ctx context.Context) {
	defer e.loops.Done()
	tick := time.NewTicker(e.cfg.LeaseDuration / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		e.mu.Lock()
		n := len(e.owned)
		e.mu.Unlock()
		if n == 0 {
			continue
		}
		if err := e.heartbeat(ctx); err != nil && ctx.Err() == nil {
			e.logger.WarnContext(ctx, "engine: renew leases", slog.Any("error", err))
		}
	}
}

func (e *Engine) heartbeat(ctx context.Context) error {
	lock := ""
	if e.db.Dialect == sqldb.Postgres {
		lock = " ORDER BY id FOR UPDATE" // the commits' lock order
	}
	rs, done, err := e.writer().query(ctx, `UPDATE loom.runs SET lease_until = ? WHERE id IN (
		SELECT id FROM loom.runs WHERE owner = ? AND end_time = 0`+lock+`) RETURNING id, last_sequence`,
		e.now().Add(e.cfg.LeaseDuration).UnixMicro(), e.id)
	if err != nil {
		return err
	}
	held := map[string]int64{}
	for rs.Next() {
		var (
			id  string
			seq int64
		)
		if err := rs.Scan(&id, &seq); err != nil {
			done()
			return err
		}
		held[id] = seq
	}
	err = rs.Err()
	done()
	if err != nil {
		return err
	}
	e.mu.Lock()
	var changed []*ownedRun
	for id, o := range e.owned {
		if seq, ok := held[id]; !ok || seq > o.saved.Load() {
			changed = append(changed, o)
		}
	}
	e.mu.Unlock()
	for _, o := range changed {
		select {
		case o.reload <- struct{}{}:
		default:
		}
	}
	return nil
}
