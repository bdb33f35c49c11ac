package engine_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator"
	"github.com/loom-dev/loom/orchestrator/blueprint"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

const tenant = "acme"

type env struct {
	db     *sqldb.DB
	engine *engine.Engine
	store  orchestrator.Store
	agents *orchestratortest.Agents
	memory *orchestratortest.Memory
}

// newEnv opens a fresh database of the dialect, migrates it and starts an engine over fakes; configure, if any,
// change the engine's configuration.
func newEnv(t *testing.T, dialect sqldb.Dialect, agents *orchestratortest.Agents, configure ...func(*engine.Config)) *env {
	t.Helper()
	if agents == nil {
		agents = &orchestratortest.Agents{}
	}
	e, open := newStoppedEnv(t, dialect, agents, configure...)
	e.engine = open(true)
	return e
}

// newStoppedEnv prepares a database; open makes an engine over it (another "process"), started or not.
func newStoppedEnv(t *testing.T, dialect sqldb.Dialect, agents *orchestratortest.Agents, configure ...func(*engine.Config)) (*env, func(start bool) *engine.Engine) {
	t.Helper()
	ctx := context.Background()
	if agents == nil {
		agents = &orchestratortest.Agents{}
	}
	memory := &orchestratortest.Memory{}
	cfg := engine.Config{FetchPollInterval: 50 * time.Millisecond, Workers: 4}
	for _, c := range configure {
		c(&cfg)
	}
	var (
		db  *sqldb.DB
		eng *engine.Engine
		err error
		url string
	)
	if dialect == sqldb.SQLite {
		db = sqldbtest.Open(t, sqldb.SQLite)
	} else {
		url = sqldbtest.PostgresURL(t)
		if db, err = sqldb.Open(ctx, url); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
	}
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	open := func(start bool) *engine.Engine {
		eng, err = engine.New(ctx, nil, db, agents, memory, cfg)
		if err != nil {
			t.Fatalf("new engine: %v", err)
		}
		if !start {
			return eng
		}
		orchestratortest.StartEngine(t, eng)
		return eng
	}
	return &env{db: db, store: store, agents: agents, memory: memory}, open
}

// reopen returns another engine over e's database (not started), logging to logger.
func (e *env) reopen(t *testing.T, logger *slog.Logger) *engine.Engine {
	t.Helper()
	eng, err := engine.New(context.Background(), logger, e.db, e.agents, e.memory, engine.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

func forEachDialect(t *testing.T, fn func(t *testing.T, dialect sqldb.Dialect)) {
	t.Parallel()
	sqldbtest.EachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		t.Parallel()
		fn(t, d)
	})
}

func (e *env) create(t *testing.T, src string) *orchestratorv1.Blueprint {
	t.Helper()
	return createBlueprint(t, e.store, src)
}

// createBlueprint loads the blueprint in YAML src and stores it in store for the test tenant.
func createBlueprint(tb testing.TB, store orchestrator.Store, src string) *orchestratorv1.Blueprint {
	tb.Helper()
	bp, errs := blueprint.Load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: src}})
	if len(errs) > 0 {
		tb.Fatalf("blueprint: %v", errs)
	}
	stored, err := store.CreateBlueprint(context.Background(), tenant, bp)
	if err != nil {
		tb.Fatal(err)
	}
	return stored
}

// openShared opens a database of dialect that another process can open too (a SQLite file or a Postgres
// database), closed when the test ends, and returns it with its URL.
func openShared(tb testing.TB, dialect sqldb.Dialect) (*sqldb.DB, string) {
	tb.Helper()
	url := "sqlite:" + sqldbtest.SQLitePath(tb)
	if dialect == sqldb.Postgres {
		url = sqldbtest.PostgresURL(tb)
	}
	db, err := sqldb.Open(context.Background(), url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db, url
}

func (e *env) waitFor(t *testing.T, id string, states ...orchestratorv1.RunState) *orchestratorv1.WorkflowRun {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := e.engine.GetRun(context.Background(), tenant, id)
		if err != nil {
			t.Fatalf("GetRun() error = %v", err)
		}
		for _, s := range states {
			if r.GetState() == s {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s is %s, want one of %v; steps: %v", id, r.GetState(), states, r.GetSteps())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func input(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func stepState(r *orchestratorv1.WorkflowRun, id string) *orchestratorv1.StepRun {
	for _, s := range r.GetSteps() {
		if s.GetStepId() == id {
			return s
		}
	}
	return nil
}

// checkEvents asserts the run's events are numbered 1..n without gaps and end with want.
func checkEvents(t *testing.T, e *env, r *orchestratorv1.WorkflowRun) []*orchestratorv1.WatchRunResponse {
	t.Helper()
	events, ended, err := e.engine.Events(context.Background(), tenant, r.GetId(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range events {
		if ev.GetSequence() != int64(i+1) {
			t.Fatalf("event %d has sequence %d: %v", i, ev.GetSequence(), events)
		}
	}
	if ended && int64(len(events)) != r.GetLastSequence() {
		t.Errorf("events = %d, last_sequence = %d", len(events), r.GetLastSequence())
	}
	if len(events) == 0 || events[0].GetRunStarted() == nil {
		t.Errorf("first event = %v, want RunStarted", events)
	}
	return events
}

const research = `
name: research
input_schema: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  - id: research
    agent: {agent: researcher, input: "'facts about ' + input.topic"}
  - id: summarise
    depends_on: [research]
    agent: {agent: writer, input: "'summary of ' + string(steps.research)"}
  - id: review
    depends_on: [summarise]
    approval: {prompt: "OK?", payload_schema: {type: object, required: [ok], properties: {ok: {type: boolean}}}}
  - id: remember
    depends_on: [review]
    memory_upsert: {namespace: notes, text: "string(steps.summarise)"}
output: steps.summarise
`

func TestApprovalFlow(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		e := newEnv(t, d, nil)
		ctx := context.Background()
		bp := e.create(t, research)
		if _, err := e.engine.StartRun(ctx, tenant, bp, input(t, map[string]any{"topic": 7.0}), ""); !errors.Is(err, orchestrator.ErrInvalidArgument) {
			t.Fatalf("StartRun(bad input) error = %v, want ErrInvalidArgument", err)
		}
		run, err := e.engine.StartRun(ctx, tenant, bp, input(t, map[string]any{"topic": "otters"}), "")
		if err != nil {
			t.Fatal(err)
		}
		run = e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_WAITING)
		if got := stepState(run, "summarise").GetOutput().GetStringValue(); got != "writer: summary of researcher: facts about otters" {
			t.Errorf("summarise output = %q", got)
		}
		approvals, _, err := e.engine.ListPendingApprovals(ctx, tenant, "", 10, "")
		if err != nil || len(approvals) != 1 || approvals[0].GetStepId() != "review" || approvals[0].GetPrompt() != "OK?" {
			t.Fatalf("ListPendingApprovals() = %v, %v", approvals, err)
		}
		if _, err := e.engine.SubmitApproval(ctx, tenant, run.GetId(), "review", orchestratorv1.Decision_DECISION_APPROVE,
			input(t, map[string]any{"ok": "yes"}), ""); !errors.Is(err, orchestrator.ErrInvalidArgument) {
			t.Fatalf("SubmitApproval(bad payload) error = %v, want ErrInvalidArgument", err)
		}
		if _, err := e.engine.SubmitApproval(ctx, "other", run.GetId(), "review", orchestratorv1.Decision_DECISION_APPROVE, nil, ""); !errors.Is(err, orchestrator.ErrNotFound) {
			t.Fatalf("SubmitApproval(other tenant) error = %v, want ErrNotFound", err)
		}
		if _, err := e.engine.SubmitApproval(ctx, tenant, run.GetId(), "review", orchestratorv1.Decision_DECISION_APPROVE,
			input(t, map[string]any{"ok": true}), "fine"); err != nil {
			t.Fatalf("SubmitApproval() error = %v", err)
		}
		if _, err := e.engine.SubmitApproval(ctx, tenant, run.GetId(), "review", orchestratorv1.Decision_DECISION_APPROVE, nil, ""); !errors.Is(err, orchestrator.ErrFailedPrecondition) {
			t.Errorf("second SubmitApproval() error = %v, want ErrFailedPrecondition", err)
		}
		run = e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
		if run.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("run = %v", run)
		}
		if got := run.GetOutput().GetStringValue(); !strings.HasPrefix(got, "writer: summary of") {
			t.Errorf("run output = %q", got)
		}
		if recs := e.memory.Records("notes"); len(recs) != 1 || !strings.HasPrefix(recs[0].GetText(), "writer: ") {
			t.Errorf("memory records = %v", recs)
		}
		calls := e.agents.Calls()
		if len(calls) != 2 || calls[0].GetIdempotencyKey() == "" || calls[0].GetIdempotencyKey() == calls[1].GetIdempotencyKey() {
			t.Errorf("agent calls = %v, want 2 with distinct idempotency keys", calls)
		}
		events := checkEvents(t, e, run)
		if last := events[len(events)-1]; last.GetRunCompleted() == nil {
			t.Errorf("last event = %v, want RunCompleted", last)
		}
		if pending, _, _ := e.engine.ListPendingApprovals(ctx, tenant, "", 10, ""); len(pending) != 0 {
			t.Errorf("pending approvals after submit = %v", pending)
		}
	})
}

func TestIdempotencyKey(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		e := newEnv(t, d, nil)
		ctx := context.Background()
		bp := e.create(t, research)
		in := input(t, map[string]any{"topic": "otters"})
		a, err := e.engine.StartRun(ctx, tenant, bp, in, "key-1")
		if err != nil {
			t.Fatal(err)
		}
		b, err := e.engine.StartRun(ctx, tenant, bp, in, "key-1")
		if err != nil || b.GetId() != a.GetId() {
			t.Fatalf("second StartRun() = %v, %v; want run %s", b.GetId(), err, a.GetId())
		}
		c, err := e.engine.StartRun(ctx, "other", bp, in, "key-1")
		if err != nil || c.GetId() == a.GetId() {
			t.Fatalf("StartRun() in another tenant = %v, %v; want a new run", c.GetId(), err)
		}
		runs, _, err := e.engine.ListRuns(ctx, tenant, "", 0, 10, "")
		if err != nil || len(runs) != 1 {
			t.Errorf("ListRuns() = %d runs, %v; want 1", len(runs), err)
		}
		if _, err := e.engine.GetRun(ctx, "other", a.GetId()); !errors.Is(err, orchestrator.ErrNotFound) {
			t.Errorf("GetRun(other tenant) error = %v, want ErrNotFound", err)
		}
	})
}

func TestRetryThenSucceed(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		failed := 0
		agents := &orchestratortest.Agents{Respond: func(_ context.Context, req *agentv1.RunRequest) (string, error) {
			if failed == 0 {
				failed++
				return "", status.Error(codes.Unavailable, "try later")
			}
			return "ok", nil
		}}
		e := newEnv(t, d, agents)
		bp := e.create(t, `
name: flaky
steps:
  - id: a
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 20ms}
    agent: {agent: flaky, input: "'x'"}
`)
		run := e.start(t, bp, orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
		if run.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED || stepState(run, "a").GetAttempts() != 2 {
			t.Fatalf("run = %v, want succeeded after 2 attempts", run)
		}
		calls := agents.Calls()
		if len(calls) != 2 || calls[0].GetIdempotencyKey() == calls[1].GetIdempotencyKey() {
			t.Errorf("calls = %v, want a new idempotency key after a recorded failure", calls)
		}
		var retries int
		for _, ev := range checkEvents(t, e, run) {
			if ev.GetStepRetry() != nil {
				retries++
				if ev.GetStepRetry().GetAttempt() != 1 || !strings.Contains(ev.GetStepRetry().GetError(), "try later") {
					t.Errorf("retry event = %v", ev)
				}
			}
		}
		if retries != 1 {
			t.Errorf("retry events = %d, want 1", retries)
		}
	})
}

func TestPermanentFailure(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		agents := orchestratortest.Failing(status.Error(codes.NotFound, "no such agent"))
		e := newEnv(t, d, agents)
		bp := e.create(t, `
name: broken
steps:
  - id: a
    agent: {agent: ghost, input: "'x'"}
  - id: b
    depends_on: [a]
    agent: {agent: ghost, input: "'y'"}
`)
		run := e.start(t, bp, orchestratorv1.RunState_RUN_STATE_FAILED)
		if !strings.Contains(run.GetError(), "no such agent") || stepState(run, "b").GetState() != orchestratorv1.StepState_STEP_STATE_SKIPPED {
			t.Errorf("run = %v", run)
		}
		if len(agents.Calls()) != 1 {
			t.Errorf("calls = %d, want 1 (NotFound is not retried)", len(agents.Calls()))
		}
		if _, err := e.engine.CancelRun(context.Background(), tenant, run.GetId(), "late"); !errors.Is(err, orchestrator.ErrFailedPrecondition) {
			t.Errorf("CancelRun(failed run) error = %v, want ErrFailedPrecondition", err)
		}
	})
}

func TestBranchParallelMapDelay(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		e := newEnv(t, d, nil)
		bp := e.create(t, `
name: shapes
steps:
  - id: gate
    branch: {condition: "input.big == true", then_steps: [fan], else_steps: [small]}
  - id: fan
    parallel: {steps: [one, two]}
  - id: one
    agent: {agent: a, input: "'1'"}
  - id: two
    delay: {duration: 50ms}
  - id: small
    agent: {agent: a, input: "'small'"}
  - id: each
    depends_on: [fan]
    map: {items: "input.docs", agent: reader, input: "string(item)", concurrency: 2}
  - id: after_small
    depends_on: [small]
    agent: {agent: a, input: "'never'"}
`)
		run, err := e.engine.StartRun(context.Background(), tenant, bp, input(t, map[string]any{"big": true, "docs": []any{"x", "y", "z"}}), "")
		if err != nil {
			t.Fatal(err)
		}
		run = e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
		if run.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("run = %v", run)
		}
		want := map[string]orchestratorv1.StepState{
			"gate": orchestratorv1.StepState_STEP_STATE_SUCCEEDED, "fan": orchestratorv1.StepState_STEP_STATE_SUCCEEDED,
			"one": orchestratorv1.StepState_STEP_STATE_SUCCEEDED, "two": orchestratorv1.StepState_STEP_STATE_SUCCEEDED,
			"each": orchestratorv1.StepState_STEP_STATE_SUCCEEDED, "small": orchestratorv1.StepState_STEP_STATE_SKIPPED,
			"after_small": orchestratorv1.StepState_STEP_STATE_SKIPPED,
		}
		for id, st := range want {
			if got := stepState(run, id).GetState(); got != st {
				t.Errorf("step %s = %s, want %s", id, got, st)
			}
		}
		each := stepState(run, "each")
		if items := each.GetOutput().GetListValue().GetValues(); len(items) != 3 || items[2].GetStringValue() != "reader: z" {
			t.Errorf("map output = %v", each.GetOutput())
		}
		// each waited for the whole parallel block, delay included.
		if two := stepState(run, "two"); each.GetStartTime().AsTime().Before(two.GetEndTime().AsTime()) {
			t.Errorf("map started %v before the parallel member ended %v", each.GetStartTime().AsTime(), two.GetEndTime().AsTime())
		}
		checkEvents(t, e, run)
	})
}

func TestCancelRunCancelsAgentCall(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		started := make(chan struct{}, 1)
		agents := &orchestratortest.Agents{Respond: func(ctx context.Context, _ *agentv1.RunRequest) (string, error) {
			started <- struct{}{}
			<-ctx.Done()
			return "", ctx.Err()
		}}
		e := newEnv(t, d, agents)
		bp := e.create(t, "name: slow\nsteps:\n  - id: a\n    agent: {agent: slow, input: \"'x'\"}\n")
		ctx := context.Background()
		run, err := e.engine.StartRun(ctx, tenant, bp, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-started:
		case <-time.After(20 * time.Second):
			t.Fatal("agent was not called")
		}
		run, err = e.engine.CancelRun(ctx, tenant, run.GetId(), "changed my mind")
		if err != nil || run.GetState() != orchestratorv1.RunState_RUN_STATE_CANCELLED || run.GetError() != "changed my mind" {
			t.Fatalf("CancelRun() = %v, %v", run, err)
		}
		events := checkEvents(t, e, run)
		if events[len(events)-1].GetRunCancelled().GetReason() != "changed my mind" {
			t.Errorf("last event = %v", events[len(events)-1])
		}
		// The in-flight call is cancelled: the fake returns, and the run stays cancelled.
		time.Sleep(300 * time.Millisecond)
		if r := e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_CANCELLED); r.GetLastSequence() != run.GetLastSequence() {
			t.Errorf("events after cancellation: %d -> %d", run.GetLastSequence(), r.GetLastSequence())
		}
	})
}

// TestQueuedWorkSurvivesRestart starts a run in a process that never works it (as if it died right after the
// StartRun commit) and finishes it in another.
func TestQueuedWorkSurvivesRestart(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		agents := &orchestratortest.Agents{}
		e, open := newStoppedEnv(t, d, agents)
		e.engine = open(false)
		bp := e.create(t, "name: two\nsteps:\n  - id: a\n    agent: {agent: x, input: \"'1'\"}\n  - id: b\n    depends_on: [a]\n    agent: {agent: x, input: \"string(steps.a)\"}\n")
		run, err := e.engine.StartRun(context.Background(), tenant, bp, nil, "restart")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if n := len(agents.Calls()); n != 0 {
			t.Fatalf("agent calls before any worker started = %d", n)
		}
		e.engine = open(true)
		run = e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
		if got := run.GetOutput().GetStringValue(); got != "x: x: 1" {
			t.Errorf("output = %q, want %q", got, "x: x: 1")
		}
		if n := len(agents.Calls()); n != 2 {
			t.Errorf("agent calls = %d, want 2 (each step exactly once)", n)
		}
		checkEvents(t, e, run)
	})
}

// TestRetryPolicyBoundsAttempts checks that a step that always fails ends after exactly its policy's attempts,
// although more are allowed for attempts cut short by crashes.
func TestRetryPolicyBoundsAttempts(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		agents := orchestratortest.Failing(status.Error(codes.Unavailable, "down"))
		e := newEnv(t, d, agents)
		bp := e.create(t, `
name: broken
steps:
  - id: a
    retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}
    agent: {agent: broken, input: "'x'"}
`)
		run := e.start(t, bp, orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
		if run.GetState() != orchestratorv1.RunState_RUN_STATE_FAILED {
			t.Fatalf("run = %v, want failed", run)
		}
		if n := len(agents.Calls()); n != 2 {
			t.Errorf("agent calls = %d, want exactly the policy's 2 attempts", n)
		}
	})
}
