package engine_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

const day = 24 * time.Hour

// clock is a time.Now moved forward by an offset the test sets.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time      { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) set(d time.Duration) { c.offset.Store(int64(d)) }

// The blueprints of the retention tests: one that finishes at once, and one that waits for an approval (with
// deadlines far beyond the days the tests' clocks jump).
const (
	quick = `
name: quick
steps:
  - id: a
    agent: {agent: writer, input: "'hello'"}
`
	waits = `
name: waits
run_deadline: 1000h
steps:
  - id: review
    approval: {prompt: "OK?", deadline: 1000h}
  - id: after
    depends_on: [review]
    agent: {agent: writer, input: "'after'"}
`
)

// dayName is the partition of run_events holding the UTC day of t.
func dayName(t time.Time) string { return "run_events_" + t.UTC().Format("20060102") }

// partitions lists run_events' partitions from the catalog (pg_inherits).
func partitions(t *testing.T, db *sqldb.DB) []string {
	t.Helper()
	db = db.Component(sqldb.OrchestratorComponent)
	return orchestratortest.Partitions(t, db.Pool, db.Table("run_events"))
}

// eventPartitionsOf returns, by partition, how many events of the run it holds.
func eventPartitionsOf(t *testing.T, db *sqldb.DB, runID string) map[string]int {
	t.Helper()
	db = db.Component(sqldb.OrchestratorComponent)
	rows, err := db.Pool.Query(context.Background(), `SELECT c.relname, count(*) FROM `+db.Table("run_events")+` e
		JOIN pg_class c ON c.oid = e.tableoid WHERE e.run_id = $1 GROUP BY c.relname`, runID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var (
			name string
			n    int
		)
		if err := rows.Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		out[name] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// start starts a run of bp and waits until it reaches one of the states want.
func (e *env) start(t *testing.T, bp *orchestratorv1.Blueprint, want ...orchestratorv1.RunState) *orchestratorv1.WorkflowRun {
	t.Helper()
	r, err := e.engine.StartRun(context.Background(), tenant, bp, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return e.waitFor(t, r.GetId(), want...)
}

func (e *env) approve(t *testing.T, id string) *orchestratorv1.WorkflowRun {
	t.Helper()
	if _, err := e.engine.SubmitApproval(context.Background(), tenant, id, "review", orchestratorv1.Decision_DECISION_APPROVE, nil, ""); err != nil {
		t.Fatal(err)
	}
	return e.waitFor(t, id, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
}

func (e *env) events(t *testing.T, id string, after int64, limit int) []int64 {
	t.Helper()
	evs, _, err := e.engine.Events(context.Background(), tenant, id, after, limit)
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]int64, len(evs))
	for i, ev := range evs {
		seqs[i] = ev.GetSequence()
	}
	return seqs
}

// TestEventPartitions runs workflows on days ahead of today (a clock the test moves) and checks, in Postgres's
// catalog, that the partitions of run_events are made ahead, that a run's events read back in sequence across a
// partition boundary, and that retention drops whole partitions but never one holding an event of an unfinished
// run.
func TestEventPartitions(t *testing.T) {
	t.Parallel()
	var c1, c2 clock
	e, open := newStoppedEnv(t, sqldb.Postgres, &orchestratortest.Agents{}, func(c *engine.Config) { c.Now = c1.now })
	e.engine = open(true)
	ctx := context.Background()
	today := time.Now().UTC().Truncate(day)

	// Made by the migration and by the engine when it was made: what existed before (run_events_upgraded, up
	// to tomorrow), then a partition per day for a week.
	want := []string{}
	for d := 1; d <= 7; d++ {
		want = append(want, dayName(today.Add(time.Duration(d)*day)))
	}
	want = append(want, "run_events_upgraded")
	if got := partitions(t, e.db); !slices.Equal(got, want) {
		t.Fatalf("partitions after start = %v, want %v", got, want)
	}

	quickBP, waitsBP := e.create(t, quick), e.create(t, waits)
	at := func(d int) {
		c1.set(time.Duration(d) * day)
		// The engine's own maintenance pass may hold the lock at this moment (it runs at start, on another
		// connection): a pass that finds it taken skips, as a second replica would, so try until this one ran.
		ahead := dayName(today.Add(time.Duration(d+7) * day))
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := e.engine.MaintainEvents(ctx); err != nil {
				t.Fatal(err)
			}
			if slices.Contains(partitions(t, e.db), ahead) || time.Now().After(deadline) {
				return
			}
		}
	}
	at(3)
	a := e.start(t, quickBP, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
	at(4)
	b := e.start(t, waitsBP, orchestratorv1.RunState_RUN_STATE_WAITING)
	at(5)
	cRun := e.start(t, waitsBP, orchestratorv1.RunState_RUN_STATE_WAITING)
	before := cRun.GetLastSequence()
	at(6)
	cRun = e.approve(t, cRun.GetId())
	if got := partitions(t, e.db); !slices.Contains(got, dayName(today.Add(13*day))) {
		t.Errorf("partitions at day 6 = %v, want them made up to day 13", got)
	}

	// Run C's events lie in two partitions; reading them resumes by sequence across the boundary.
	if got := eventPartitionsOf(t, e.db, cRun.GetId()); len(got) != 2 || got[dayName(today.Add(5*day))] != int(before) {
		t.Errorf("run C's events by partition = %v, want %d in day 5's and the rest in day 6's", got, before)
	}
	last := cRun.GetLastSequence()
	if got := e.events(t, cRun.GetId(), 0, 1000); !slices.Equal(got, orchestratortest.Sequences(1, last)) {
		t.Errorf("events of C = %v, want 1..%d", got, last)
	}
	if got := e.events(t, cRun.GetId(), before-1, 2); !slices.Equal(got, []int64{before, before + 1}) {
		t.Errorf("events of C after %d, 2 = %v, want %d, %d (across the boundary)", before-1, got, before, before+1)
	}
	if got := e.events(t, cRun.GetId(), before, 1000); !slices.Equal(got, orchestratortest.Sequences(before+1, last)) {
		t.Errorf("events of C after %d = %v, want %d..%d", before, got, before+1, last)
	}

	// Another replica applies a retention of 7 days at day 20. Run B, still waiting, was created on day 4: the
	// partitions up to day 3 go, day 4's stays.
	c2.set(6 * day)
	maint, err := engine.NewPostgres(ctx, nil, e.db, e.agents, e.memory, engine.Config{Now: c2.now, EventRetention: 7 * day})
	if err != nil {
		t.Fatal(err)
	}
	c2.set(20 * day)
	rep, err := maint.MaintainEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantDropped := []string{"run_events_upgraded"}
	for d := 1; d <= 3; d++ {
		wantDropped = append(wantDropped, dayName(today.Add(time.Duration(d)*day)))
	}
	slices.Sort(rep.Dropped)
	slices.Sort(wantDropped)
	if !slices.Equal(rep.Dropped, wantDropped) {
		t.Errorf("dropped %v, want %v", rep.Dropped, wantDropped)
	}
	got := partitions(t, e.db)
	for _, p := range wantDropped {
		if slices.Contains(got, p) {
			t.Errorf("partition %s is still in pg_inherits: %v", p, got)
		}
	}
	for _, d := range []int{4, 5, 6, 27} {
		if !slices.Contains(got, dayName(today.Add(time.Duration(d)*day))) {
			t.Errorf("partition of day %d missing after retention: %v", d, got)
		}
	}
	if got := e.events(t, a.GetId(), 0, 1000); len(got) != 0 {
		t.Errorf("events of finished run A (day 3) after retention = %v, want none", got)
	}
	if got := e.events(t, b.GetId(), 0, 1000); !slices.Equal(got, orchestratortest.Sequences(1, b.GetLastSequence())) {
		t.Errorf("events of waiting run B after retention = %v, want 1..%d", got, b.GetLastSequence())
	}

	// B finishes (on day 6): the next pass drops every day that ends by the bound (day 13).
	b = e.approve(t, b.GetId())
	rep, err = maint.MaintainEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Dropped) != 9 || !slices.Contains(rep.Dropped, dayName(today.Add(4*day))) || !slices.Contains(rep.Dropped, dayName(today.Add(12*day))) {
		t.Errorf("second pass dropped %v, want days 4 to 12", rep.Dropped)
	}
	if got := e.events(t, b.GetId(), 0, 1000); len(got) != 0 {
		t.Errorf("events of B after its retention = %v, want none", got)
	}
	if _, err := e.engine.GetRun(ctx, tenant, b.GetId()); err != nil {
		t.Errorf("GetRun(B) after its events were dropped: %v", err)
	}
}

// TestEventRetentionSQLite checks retention on SQLite: the events older than the bound are deleted in batches,
// except those of an unfinished run.
func TestEventRetentionSQLite(t *testing.T) {
	t.Parallel()
	var c1 clock
	e, open := newStoppedEnv(t, sqldb.SQLite, &orchestratortest.Agents{}, func(c *engine.Config) { c.Now = c1.now })
	e.engine = open(true)
	ctx := context.Background()
	quickBP, waitsBP := e.create(t, quick), e.create(t, waits)
	c1.set(3 * day)
	a := e.start(t, quickBP, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
	c1.set(4 * day)
	b := e.start(t, waitsBP, orchestratorv1.RunState_RUN_STATE_WAITING)
	// Enough old events of run A for several batches.
	const extra = 2500
	at := time.Now().Add(3 * day).UnixMicro()
	for i := range extra {
		if _, err := e.db.ExecContext(ctx, `INSERT INTO run_events (run_id, sequence, event_time, event) VALUES (?, ?, ?, ?)`,
			a.GetId(), a.GetLastSequence()+1+int64(i), at, []byte{}); err != nil {
			t.Fatal(err)
		}
	}

	var c2 clock
	c2.set(20 * day)
	maint, err := engine.NewSQLite(ctx, nil, e.db, e.agents, e.memory, engine.Config{Now: c2.now, EventRetention: 7 * day})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := maint.MaintainEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := a.GetLastSequence() + extra; rep.Deleted != want {
		t.Errorf("deleted %d events, want %d (run A's)", rep.Deleted, want)
	}
	if got := e.events(t, a.GetId(), 0, 1000); len(got) != 0 {
		t.Errorf("events of A after retention = %v", got)
	}
	if got := e.events(t, b.GetId(), 0, 1000); !slices.Equal(got, orchestratortest.Sequences(1, b.GetLastSequence())) {
		t.Errorf("events of waiting run B after retention = %v, want 1..%d", got, b.GetLastSequence())
	}
	b = e.approve(t, b.GetId())
	if rep, err = maint.MaintainEvents(ctx); err != nil || rep.Deleted != b.GetLastSequence() {
		t.Errorf("second pass deleted %d (%v), want B's %d", rep.Deleted, err, b.GetLastSequence())
	}
}
