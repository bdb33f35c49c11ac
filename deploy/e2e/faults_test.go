package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
)

// loadInterval paces open-loop load below the gateway's rate limit (compose: LOOM_RATE_LIMIT 50 per principal).
const loadInterval = 25 * time.Millisecond

// call is one client call of a load run.
type call struct {
	start, end time.Time
	err        error
}

// openLoop starts one call every loadInterval, each in its own goroutine so a slow call delays no other, and
// returns them all once they finished. at(i) runs before call i is started (in the pacing goroutine).
func openLoop(ctx context.Context, n int, at func(i int), do func(ctx context.Context, i int) error) []call {
	calls := make([]call, n)
	var wg sync.WaitGroup
	tick := time.NewTicker(loadInterval)
	defer tick.Stop()
	for i := range n {
		if at != nil {
			at(i)
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			calls[i].start = time.Now()
			calls[i].err = do(cctx, i)
			calls[i].end = time.Now()
		})
		<-tick.C
	}
	wg.Wait()
	return calls
}

// failureSummary describes the failed calls of a load run.
type failureSummary struct {
	failed int
	late   int // failed calls started after the cut-off
	byCode map[string]int
	first  map[string]string // the first message of each code
}

func (f failureSummary) String() string {
	if f.failed == 0 {
		return "none"
	}
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(f.byCode)) {
		parts = append(parts, fmt.Sprintf("%s x%d (%q)", code, f.byCode[code], f.first[code]))
	}
	return strings.Join(parts, ", ")
}

// failures summarises the failed calls; late counts those started after cutoff (when it is set).
func failures(calls []call, cutoff time.Time) failureSummary {
	f := failureSummary{byCode: map[string]int{}, first: map[string]string{}}
	for _, c := range calls {
		if c.err == nil {
			continue
		}
		f.failed++
		code := status.Code(c.err).String()
		if f.byCode[code]++; f.byCode[code] == 1 {
			f.first[code] = status.Convert(c.err).Message()
		}
		if !cutoff.IsZero() && c.start.After(cutoff) {
			f.late++
		}
	}
	return f
}

// testKillMemoryReplica kills -9 one memory replica during 200 searches through the gateway, then restarts it
// and checks that it gets calls again.
func (s *suite) testKillMemoryReplica(t *testing.T) {
	mem := s.services["memory"]
	if mem == nil || len(mem.replicas) < 2 {
		t.Fatal("compose.yaml should run memory with at least two replicas")
	}
	victim := mem.replicas[len(mem.replicas)-1]
	ctx := as(t.Context(), s.newKey(t, "load-memory-kill", "reader"))
	const n, killAt = 200, 60
	var killed time.Time
	calls := openLoop(ctx, n, func(i int) {
		if i == killAt {
			killed = time.Now()
			go victim.kill()
		}
	}, func(ctx context.Context, i int) error {
		res, err := s.mem.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "cat"}, TopK: 3})
		if err == nil && len(res.GetHits()) == 0 {
			err = errors.New("no hits")
		}
		return err
	})
	f := failures(calls, killed.Add(time.Second))
	s.figure(t, "kill -9 %s during %d searches via the gateway: %d failed, %d of them started more than 1 s after the kill (target 0); %v",
		victim.name, n, f.failed, f.late, f)
	if f.late > 0 {
		t.Errorf("%d searches failed more than 1 s after the kill: health-checked balancing should have removed %s", f.late, victim.name)
	}

	restart := time.Now()
	if err := victim.start(t.Context()); err != nil {
		t.Fatalf("restart %s: %v", victim.name, err)
	}
	serving := time.Since(restart)
	// Calls reach it again once the gateway's health check (every 500 ms) sees it SERVING.
	const searchProc = `"procedure":"/loom.memory.v1.MemoryService/Search"`
	var rejoined time.Duration
	calls = openLoop(ctx, 80, nil, func(ctx context.Context, i int) error {
		_, err := s.mem.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "dog"}, TopK: 3})
		if rejoined == 0 && strings.Contains(victim.logText(), searchProc) {
			rejoined = time.Since(restart)
		}
		return err
	})
	served := strings.Count(victim.logText(), searchProc)
	f = failures(calls, time.Time{})
	s.figure(t, "restart %s: SERVING after %v; first search reached it %v after the restart; it served %d of 80 searches; failed: %v",
		victim.name, serving.Round(time.Millisecond), rejoined.Round(time.Millisecond), served, f)
	if served == 0 {
		t.Errorf("the restarted %s got no searches: it did not rejoin the gateway's pool", victim.name)
	}
	if f.failed > 0 {
		t.Errorf("%d searches failed after the restart", f.failed)
	}
}

// failoverBlueprint is three sequential agent steps on a slow simulated model, then a memory write: each run
// takes a few seconds, so a kill lands mid-run. Takeover is decided by the orchestrator's run lease (default 3 s).
const failoverBlueprint = `
name: failover
input_schema: {type: object, required: [label], properties: {label: {type: string}}}
steps:
  - id: a1
    timeout: 3s
    retry: {max_attempts: 5, initial_backoff: 200ms, max_backoff: 1s}
    agent: {agent: slowpoke, input: "'a1 of ' + input.label"}
  - id: a2
    depends_on: [a1]
    timeout: 3s
    retry: {max_attempts: 5, initial_backoff: 200ms, max_backoff: 1s}
    agent: {agent: slowpoke, input: "'a2 of ' + input.label"}
  - id: a3
    depends_on: [a2]
    timeout: 3s
    retry: {max_attempts: 5, initial_backoff: 200ms, max_backoff: 1s}
    agent: {agent: slowpoke, input: "'a3 of ' + input.label"}
  - id: remember
    depends_on: [a3]
    retry: {max_attempts: 10, initial_backoff: 200ms, max_backoff: 1s}
    memory_upsert: {namespace: failover, text: "input.label + ': ' + string(steps.a3)"}
`

// failoverSetup creates the failover blueprint, its agent and namespace, once per deployment.
func (s *suite) failoverSetup(t *testing.T, ctx context.Context) {
	t.Helper()
	var err error
	s.failoverOnce.Do(func() {
		if _, err = s.mem.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "failover", Dimension: 64}}); err != nil {
			return
		}
		slow := &agentv1.Agent{Name: "slowpoke", Model: &agentv1.Model{Sim: &agentv1.SimScript{
			Latency: durationpb.New(700 * time.Millisecond), Turns: []*agentv1.SimTurn{{Reply: "step done"}}}}}
		if _, err = s.agents.CreateAgent(ctx, &agentv1.CreateAgentRequest{Agent: slow}); err != nil {
			return
		}
		_, err = s.orch.CreateBlueprint(ctx, &orchestratorv1.CreateBlueprintRequest{Source: &orchestratorv1.BlueprintSource{
			Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: failoverBlueprint}}})
	})
	if err != nil {
		t.Fatalf("failover setup: %v", err)
	}
}

// startRuns starts one failover run per label and returns their ids.
func (s *suite) startRuns(t *testing.T, ctx context.Context, labels []string) []string {
	t.Helper()
	var ids []string
	for _, l := range labels {
		in, _ := structpb.NewStruct(map[string]any{"label": l})
		res, err := s.orch.StartRun(ctx, &orchestratorv1.StartRunRequest{Blueprint: "failover", Input: in, IdempotencyKey: "e2e-" + l})
		if err != nil {
			t.Fatalf("StartRun %s: %v", l, err)
		}
		ids = append(ids, res.GetRun().GetId())
	}
	return ids
}

// awaitRuns polls the runs through the gateway until each has ended, and returns them.
func (s *suite) awaitRuns(t *testing.T, ctx context.Context, ids []string, timeout time.Duration) map[string]*orchestratorv1.WorkflowRun {
	t.Helper()
	out := map[string]*orchestratorv1.WorkflowRun{}
	deadline := time.Now().Add(timeout)
	for len(out) < len(ids) {
		for _, id := range ids {
			if out[id] != nil {
				continue
			}
			res, err := s.orch.GetRun(ctx, &orchestratorv1.GetRunRequest{Id: id})
			if err != nil {
				continue // a replica may be gone; the next poll goes elsewhere
			}
			if st := res.GetRun().GetState(); st != orchestratorv1.RunState_RUN_STATE_RUNNING && st != orchestratorv1.RunState_RUN_STATE_WAITING {
				out[id] = res.GetRun()
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("%d of %d runs still running after %v", len(ids)-len(out), len(ids), timeout)
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
	return out
}

// checkOutputs checks that each agent step of a finished failover run recorded the agent's answer: a replayed
// or rescued step must not succeed with another output (an empty one, say).
func checkOutputs(t *testing.T, run *orchestratorv1.WorkflowRun) {
	t.Helper()
	for _, st := range run.GetSteps() {
		if strings.HasPrefix(st.GetStepId(), "a") && st.GetOutput().GetStringValue() != "step done" {
			t.Errorf("run %s step %s: output %v, want the agent's answer %q", run.GetId(), st.GetStepId(), st.GetOutput(), "step done")
		}
	}
}

// events returns a finished run's whole event log (WatchRun from the start ends when the run has ended).
func (s *suite) events(ctx context.Context, id string) ([]*orchestratorv1.WatchRunResponse, error) {
	w, err := s.orch.WatchRun(ctx, &orchestratorv1.WatchRunRequest{Id: id})
	if err != nil {
		return nil, err
	}
	var evs []*orchestratorv1.WatchRunResponse
	for {
		ev, err := w.Recv()
		if err == io.EOF {
			return evs, nil
		}
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
}

// sideEffects are the agent runs and memory records the failover runs caused.
type sideEffects struct {
	agentRuns   int // agent runs of the failover agent, in all
	interrupted int // of them, runs that did not succeed (cut off by a kill, then run again)
	duplicated  int // (run, step) pairs whose agent call succeeded more than once
	missing     int // (run, step) pairs without a succeeded agent call
	records     int64
}

// checkSideEffects counts the agent runs of each (run label, step) and the failover namespace's records: every
// step's agent call must have succeeded exactly once, and each run remembered once.
func (s *suite) checkSideEffects(t *testing.T, ctx context.Context, labels []string, wantRecords int64) sideEffects {
	t.Helper()
	var fx sideEffects
	succeeded := map[string]int{}
	var page string
	for {
		res, err := s.agents.ListRuns(ctx, &agentv1.ListRunsRequest{Agent: "slowpoke", PageSize: 1000, PageToken: page})
		if err != nil {
			t.Fatalf("agent ListRuns: %v", err)
		}
		for _, r := range res.GetRuns() {
			fx.agentRuns++
			if r.GetState() == agentv1.RunState_RUN_STATE_SUCCEEDED {
				succeeded[r.GetInput()]++
			} else {
				fx.interrupted++
			}
		}
		if page = res.GetNextPageToken(); page == "" {
			break
		}
	}
	for _, l := range labels {
		for _, step := range []string{"a1", "a2", "a3"} {
			switch n := succeeded[step+" of "+l]; {
			case n == 0:
				fx.missing++
				t.Errorf("run %s step %s: no succeeded agent run", l, step)
			case n > 1:
				fx.duplicated++
				t.Errorf("run %s step %s: %d succeeded agent runs, want exactly 1", l, step, n)
			}
		}
	}
	ns, err := s.mem.GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "failover"})
	if err != nil {
		t.Fatal(err)
	}
	if fx.records = ns.GetNamespace().GetStats().GetRecordCount(); fx.records != wantRecords {
		t.Errorf("failover namespace holds %d records, want %d (one per run)", fx.records, wantRecords)
	}
	return fx
}

// testKillOrchestratorReplica kills -9 one of two orchestrator replicas while runs are in flight: the other
// finishes every run, no step's side effect happens twice.
func (s *suite) testKillOrchestratorReplica(t *testing.T) {
	orch := s.services["orchestrator"]
	if orch == nil || len(orch.replicas) < 2 {
		t.Fatal("the suite needs two orchestrator replicas")
	}
	ctx := as(t.Context(), s.newKey(t, "load-orchestrator-kill", "writer"))
	s.failoverSetup(t, ctx)
	var labels []string
	for i := range 8 {
		labels = append(labels, fmt.Sprintf("kill-%d", i+1))
	}
	ids := s.startRuns(t, ctx, labels)
	time.Sleep(1200 * time.Millisecond) // every run is in a1 or a2
	victim := orch.replicas[0]
	killed := time.Now()
	victim.kill()
	t.Logf("killed %s (%s) %v after starting %d runs", victim.name, victim.addr, time.Since(killed.Add(-1200*time.Millisecond)).Round(time.Millisecond), len(ids))

	runs := s.awaitRuns(t, ctx, ids, 150*time.Second)
	allDone := time.Since(killed)
	lost := 0
	for _, id := range ids {
		if r := runs[id]; r == nil || r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			lost++
			t.Errorf("run %s: %v (%s)", id, r.GetState(), r.GetError())
		} else {
			checkOutputs(t, r)
		}
	}
	// Takeover: for each run, the first event after the kill. Runs the survivor held go on at once; runs the
	// victim owned wait for its lease to expire.
	var takeover time.Duration
	var resumed []string
	stuck := 0
	for i, id := range ids {
		evs, err := s.events(ctx, id)
		if err != nil {
			t.Errorf("events of %s: %v", id, err)
			continue
		}
		for _, ev := range evs {
			if at := ev.GetTime().AsTime(); at.After(killed) {
				d := at.Sub(killed)
				takeover = max(takeover, d)
				if d > 2*time.Second {
					stuck++
				}
				resumed = append(resumed, fmt.Sprintf("%s:%v", labels[i], d.Round(100*time.Millisecond)))
				break
			}
		}
	}
	fx := s.checkSideEffects(t, ctx, labels, int64(len(labels)))
	s.figure(t, "kill -9 %s with %d runs in flight (orchestrator lease %s, the default): %d lost, %d duplicated side effects (agent steps that succeeded twice), %d memory records for %d runs; %d agent runs for %d agent steps (%d cut off by the kill and run again); every run done %v after the kill",
		victim.name, len(ids), cmp.Or(overlays["orchestrator"]["LOOM_ORCHESTRATOR_LEASE"], "3s"), lost, fx.duplicated, fx.records, len(ids),
		fx.agentRuns, 3*len(ids), fx.interrupted, allDone.Round(100*time.Millisecond))
	s.figure(t, "orchestrator takeover time (kill -> the last held run moves again): %v; %d runs waited for the rescue; per run first event after the kill: %s",
		takeover.Round(100*time.Millisecond), stuck, strings.Join(resumed, " "))
	if stuck == 0 {
		t.Logf("no run had a step job on %s at the kill: the takeover time measures nothing", victim.name)
	}

	restart := time.Now()
	if err := victim.start(t.Context()); err != nil {
		t.Fatalf("restart %s: %v", victim.name, err)
	}
	s.figure(t, "restart %s: SERVING after %v", victim.name, time.Since(restart).Round(time.Millisecond))
}

// testRestartPostgres restarts the private cluster (pg_ctl restart -m fast) under load: no process exits,
// /readyz recovers, every acknowledged write survives, runs in flight finish.
func (s *suite) testRestartPostgres(t *testing.T) {
	ctx := as(t.Context(), s.newKey(t, "load-postgres-restart", "writer"))
	s.failoverSetup(t, ctx)
	if _, err := s.mem.CreateNamespace(ctx, &memoryv1.CreateNamespaceRequest{Namespace: &memoryv1.Namespace{Name: "pgload", Dimension: 64}}); err != nil {
		t.Fatal(err)
	}
	labels := []string{"pg-1", "pg-2", "pg-3"}
	ids := s.startRuns(t, ctx, labels)

	// /readyz of every replica, every 100 ms, from before the restart until each is ready again after it.
	reps := s.replicas()
	sawNotReady := make([]bool, len(reps))
	readyAgain := make([]time.Duration, len(reps))
	restarted := make(chan time.Time, 1)
	var pollers sync.WaitGroup
	stopPoll := make(chan struct{})
	stopPolling := sync.OnceFunc(func() { close(stopPoll) })
	defer stopPolling()
	for i, r := range reps {
		pollers.Go(func() {
			var after time.Time
			for {
				if after.IsZero() {
					select {
					case at := <-restarted: // pass it on to the other pollers
						after = at
						restarted <- at
					default:
					}
				}
				ok := readyz(r.addr)
				if !ok {
					sawNotReady[i] = true
				}
				if !after.IsZero() && ok {
					readyAgain[i] = time.Since(after)
					return
				}
				select {
				case <-stopPoll:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}

	const n = 240
	var restartTook time.Duration
	var restartErr error
	var restartStarted time.Time
	var restartWG sync.WaitGroup
	var acked sync.Map // upserted ids the server acknowledged
	calls := openLoop(ctx, n, func(i int) {
		if i == 60 {
			restartWG.Go(func() {
				restartStarted = time.Now()
				restartErr = s.pg.ctl("restart", "-m", "fast")
				restartTook = time.Since(restartStarted)
				restarted <- time.Now()
			})
		}
	}, func(ctx context.Context, i int) error {
		if i%2 == 0 {
			id := fmt.Sprintf("load-%d", i)
			_, err := s.mem.Upsert(ctx, &memoryv1.UpsertRequest{Namespace: "pgload", Records: []*memoryv1.Record{{Id: id, Text: "load record " + id}}})
			if err == nil {
				acked.Store(id, true)
			}
			return err
		}
		_, err := s.mem.Search(ctx, &memoryv1.SearchRequest{Namespace: "notes", Query: &memoryv1.SearchRequest_Text{Text: "ship"}, TopK: 3})
		return err
	})
	restartWG.Wait()
	if restartErr != nil {
		t.Fatalf("pg_ctl restart: %v", restartErr)
	}
	deadline := time.After(30 * time.Second)
	waitPollers := make(chan struct{})
	go func() { pollers.Wait(); close(waitPollers) }()
	select {
	case <-waitPollers:
	case <-deadline:
		stopPolling()
		<-waitPollers
	}

	f := failures(calls, time.Time{})
	var firstFail, lastFail time.Time
	for _, c := range calls {
		if c.err != nil {
			if firstFail.IsZero() || c.start.Before(firstFail) {
				firstFail = c.start
			}
			if c.start.After(lastFail) {
				lastFail = c.start
			}
		}
	}
	window := "none"
	if f.failed > 0 {
		window = fmt.Sprintf("from %v to %v after the restart began", firstFail.Sub(restartStarted).Round(time.Millisecond), lastFail.Sub(restartStarted).Round(time.Millisecond))
	}
	s.figure(t, "pg_ctl restart -m fast took %v under %d calls (upserts and searches via the gateway): %d failed, %s; %v",
		restartTook.Round(time.Millisecond), n, f.failed, window, f)
	// A database outage is the server's trouble and passes: callers must see Unavailable, which clients retry,
	// never that their valid key is wrong, or Internal (a bug), which nobody retries.
	for _, code := range []string{"Unauthenticated", "PermissionDenied", "InvalidArgument", "NotFound", "Internal", "Unknown"} {
		if f.byCode[code] > 0 {
			t.Errorf("%d calls with a valid key failed with %s during the Postgres restart (%q); want Unavailable", f.byCode[code], code, f.first[code])
		}
	}

	var notReady, neverReady []string
	for i, r := range reps {
		if sawNotReady[i] {
			notReady = append(notReady, r.name)
		}
		if readyAgain[i] == 0 {
			neverReady = append(neverReady, r.name)
		}
	}
	s.figure(t, "/readyz during the restart: false at some point on %v; true again after it on all but %v", notReady, neverReady)
	if len(neverReady) > 0 {
		t.Errorf("/readyz not true within 30 s of the restart on %v", neverReady)
	}
	var exited []string
	for _, r := range reps {
		if !r.running() {
			exited = append(exited, r.name)
		}
	}
	if len(exited) > 0 {
		t.Errorf("processes exited during the Postgres restart: %v", exited)
	}

	// Nothing acknowledged is lost, and the service works again.
	var want []string
	acked.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	slices.Sort(want)
	var got *memoryv1.GetResponse
	var err error
	for range 50 { // the first calls after the restart may still meet a broken pooled connection
		if got, err = s.mem.Get(ctx, &memoryv1.GetRequest{Namespace: "pgload", Ids: want}); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Get after the restart: %v", err)
	}
	if len(got.GetMissingIds()) > 0 {
		t.Errorf("%d acknowledged upserts lost in the restart: %v", len(got.GetMissingIds()), got.GetMissingIds())
	}
	runs := s.awaitRuns(t, ctx, ids, 90*time.Second)
	for _, id := range ids {
		if r := runs[id]; r == nil || r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			t.Errorf("run %s across the Postgres restart: %v %s", id, r.GetState(), r.GetError())
		} else {
			checkOutputs(t, r)
		}
	}
	s.figure(t, "after the Postgres restart: %d of %d acknowledged upserts found; %d workflow runs in flight finished", len(got.GetRecords()), len(want), len(runs))
}

// testSIGTERM sends SIGTERM to every process at once: each exits with status 0.
func (s *suite) testSIGTERM(t *testing.T) {
	reps := s.replicas()
	errs := make([]error, len(reps))
	took := make([]time.Duration, len(reps))
	var wg sync.WaitGroup
	for i, r := range reps {
		wg.Go(func() {
			start := time.Now()
			errs[i] = r.terminate(30 * time.Second)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	var lines []string
	for i, r := range reps {
		res := "exit 0"
		if errs[i] != nil {
			res = errs[i].Error()
			t.Errorf("%s after SIGTERM: %v", r.name, errs[i])
		}
		lines = append(lines, fmt.Sprintf("%s %s in %v", r.name, res, took[i].Round(time.Millisecond)))
	}
	s.figure(t, "SIGTERM to all %d processes: %s", len(reps), strings.Join(lines, "; "))
}
