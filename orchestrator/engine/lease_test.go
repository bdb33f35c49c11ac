package engine_test

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
	"google.golang.org/grpc"
)

// TestParallelFinishesAfterMembers: a parallel step is running while its members run, and ends (its output
// event after theirs, its end time no earlier than theirs) when the last one has.
func TestParallelFinishesAfterMembers(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		release := make(chan struct{})
		agents := &orchestratortest.Agents{Respond: func(ctx context.Context, req *agentv1.RunRequest) (string, error) {
			if req.GetInput() == "slow" {
				select {
				case <-release:
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			return req.GetInput(), nil
		}}
		e := newEnv(t, d, agents)
		bp := e.create(t, `
name: par
steps:
  - id: both
    parallel: {steps: [quick, slow]}
  - id: quick
    agent: {agent: a, input: "'quick'"}
  - id: slow
    agent: {agent: a, input: "'slow'"}
  - id: fan
    depends_on: [both]
    agent: {agent: a, input: "'fan'"}
`)
		ctx := context.Background()
		run, err := e.engine.StartRun(ctx, tenant, bp, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		// While slow runs, both is still running.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			r, err := e.engine.GetRun(ctx, tenant, run.GetId())
			if err != nil {
				t.Fatal(err)
			}
			if stepState(r, "quick").GetState() == orchestratorv1.StepState_STEP_STATE_SUCCEEDED {
				if got := stepState(r, "both").GetState(); got != orchestratorv1.StepState_STEP_STATE_RUNNING {
					t.Fatalf("parallel step while a member runs = %s, want RUNNING", got)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("quick never finished: %v", r.GetSteps())
			}
		}
		close(release)
		r := e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
		if r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			t.Fatalf("run = %v", r)
		}
		both, slow, fan := stepState(r, "both"), stepState(r, "slow"), stepState(r, "fan")
		if both.GetEndTime().AsTime().Before(slow.GetEndTime().AsTime()) || !both.GetEndTime().AsTime().After(both.GetStartTime().AsTime()) {
			t.Errorf("parallel step %v..%v, slow member ended %v", both.GetStartTime().AsTime(), both.GetEndTime().AsTime(), slow.GetEndTime().AsTime())
		}
		if fan.GetStartTime().AsTime().Before(both.GetEndTime().AsTime()) {
			t.Errorf("fan started %v before the parallel step ended %v", fan.GetStartTime().AsTime(), both.GetEndTime().AsTime())
		}
		order := map[string]int64{}
		for _, ev := range checkEvents(t, e, r) {
			if ev.GetStepOutput() != nil {
				order[ev.GetStepId()] = ev.GetSequence()
			}
		}
		if !(order["quick"] < order["both"] && order["slow"] < order["both"] && order["both"] < order["fan"]) {
			t.Errorf("output events in order %v, want quick and slow, then both, then fan", order)
		}
	})
}

// unfinishedAgents answers the first call of each key with a run that is still RUNNING (as a replayed key does
// when its first call was cut off), and the next with the real result.
type unfinishedAgents struct {
	orchestratortest.AgentAt
	calls atomic.Int64
	keys  chan string
}

func (a *unfinishedAgents) RunStream(ctx context.Context, req *agentv1.RunStreamRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[agentv1.RunStreamResponse], error) {
	return orchestratortest.StreamRun(ctx, req, a.Run, true)
}

func (a *unfinishedAgents) Run(_ context.Context, req *agentv1.RunRequest, _ ...grpc.CallOption) (*agentv1.RunResponse, error) {
	a.keys <- req.GetIdempotencyKey()
	state, out := agentv1.RunState_RUN_STATE_RUNNING, ""
	if a.calls.Add(1) > 1 {
		state, out = agentv1.RunState_RUN_STATE_SUCCEEDED, "real result"
	}
	return &agentv1.RunResponse{Run: &agentv1.Run{Id: "ar-1", State: state, Output: out, IdempotencyKey: req.GetIdempotencyKey()}}, nil
}

// TestUnfinishedAgentRunIsRetriedWithTheSameKey: an agent step whose agent run had not completed is not recorded
// SUCCEEDED; it is retried with the same idempotency key and records the agent's real result.
func TestUnfinishedAgentRunIsRetriedWithTheSameKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := sqldbtest.Open(t, sqldb.SQLite)
	store, err := sqlstore.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	agents := &unfinishedAgents{keys: make(chan string, 10)}
	eng, err := engine.NewSQLite(ctx, nil, db, agents, nil, engine.Config{})
	if err != nil {
		t.Fatal(err)
	}
	orchestratortest.StartEngine(t, eng)
	e := &env{engine: eng, store: store}
	bp := e.create(t, "name: one\nsteps:\n  - id: a\n    retry: {max_attempts: 1, initial_backoff: 10ms}\n    agent: {agent: x, input: \"'x'\"}\n")
	run, err := eng.StartRun(ctx, tenant, bp, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	r := e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED, orchestratorv1.RunState_RUN_STATE_FAILED)
	if got := stepState(r, "a"); r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED || got.GetOutput().GetStringValue() != "real result" {
		t.Fatalf("run = %s, step a = %v; want the agent's real result", r.GetState(), got)
	}
	if first, second := <-agents.keys, <-agents.keys; first != second {
		t.Errorf("keys %q then %q, want the same key", first, second)
	}
}

// TestListRunsSkipsUndecodableRun: a stored run that no longer decodes is skipped (with a logged error), the
// others are listed, pages stay whole, and DeleteRun removes it.
func TestListRunsSkipsUndecodableRun(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		ctx := context.Background()
		var logs logtest.Buffer
		e, open := newStoppedEnv(t, d, nil)
		e.engine = open(false)
		bp := e.create(t, "name: one\nsteps:\n  - id: a\n    approval: {prompt: ok}\n")
		var ids []string
		for range 4 {
			r, err := e.engine.StartRun(ctx, tenant, bp, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, r.GetId())
			time.Sleep(time.Millisecond) // distinct create times
		}
		db := e.db.Component(sqldb.OrchestratorComponent)
		if _, err := db.ExecContext(ctx, db.Rebind(`UPDATE loom.runs SET input = ?, state = ?, end_time = 1 WHERE id = ?`), []byte{0xff, 0xff, 0xff}, int64(orchestratorv1.RunState_RUN_STATE_FAILED), ids[2]); err != nil {
			t.Fatal(err)
		}
		eng := e.reopen(t, slog.New(slog.NewTextHandler(&logs, nil)))
		var got []string
		token := ""
		for {
			runs, next, err := eng.ListRuns(ctx, tenant, "", orchestratorv1.RunState_RUN_STATE_UNSPECIFIED, 2, token)
			if err != nil {
				t.Fatalf("ListRuns() error = %v", err)
			}
			for _, r := range runs {
				got = append(got, r.GetId())
			}
			if token = next; token == "" {
				break
			}
		}
		if want := []string{ids[3], ids[1], ids[0]}; strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("listed %v, want %v", got, want)
		}
		if !strings.Contains(logs.String(), ids[2]) {
			t.Errorf("log does not name the skipped run: %s", logs.String())
		}
		if err := eng.DeleteRun(ctx, tenant, ids[2]); err != nil {
			t.Errorf("DeleteRun(undecodable) = %v", err)
		}
	})
}

// TestSlowStepIsNotTakenOver: a step that runs for several lease periods on a live replica is never taken over
// by another replica (the heartbeat renews the lease), and its agent is called once.
func TestSlowStepIsNotTakenOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := sqldbtest.PostgresURL(t)
	open := func() *sqldb.DB {
		db, err := sqldb.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	dbA, dbB := open(), open()
	store, err := sqlstore.New(ctx, dbA)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	agents := &orchestratortest.Agents{Respond: func(ctx context.Context, _ *agentv1.RunRequest) (string, error) {
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}}
	// A lease short enough to lapse several times during the test if nothing renewed it, long enough that a
	// loaded machine (or the race detector) does not delay a renewal past it.
	const lease = time.Second
	cfg := engine.Config{LeaseDuration: lease, FetchPollInterval: 50 * time.Millisecond}
	a, err := engine.NewPostgres(ctx, nil, dbA, agents, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := engine.NewPostgres(ctx, nil, dbB, agents, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, eng := range []*engine.Engine{a, b} {
		orchestratortest.StartEngine(t, eng)
	}
	e := &env{engine: a, store: store}
	bp := e.create(t, "name: slow\nsteps:\n  - id: a\n    agent: {agent: x, input: \"'x'\"}\n")
	run, err := a.StartRun(ctx, tenant, bp, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	// Four lease periods: B polls every 50 ms and would take a lapsed lease.
	time.Sleep(4 * lease)
	if n := len(agents.Calls()); n != 1 {
		t.Errorf("agent calls during a slow step = %d, want 1 (never taken over)", n)
	}
	close(release)
	r := e.waitFor(t, run.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
	if got := stepState(r, "a").GetAttempts(); got != 1 {
		t.Errorf("attempts = %d, want 1", got)
	}
}
