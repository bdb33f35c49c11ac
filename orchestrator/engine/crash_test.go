package engine_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
	"github.com/loom-dev/loom/orchestrator/sqlstore"
)

// The crash test re-executes this test binary as the replica (TestHelperProcess) and kills it with SIGKILL.
const (
	envCrashHelper = "LOOM_CRASH_HELPER" // "1" in a replica
	envCrashDB     = "LOOM_CRASH_DB"     // database URL of the replica
	envCrashLog    = "LOOM_CRASH_LOG"    // the fake agent's append-only side-effect log
	envCrashSeed   = "LOOM_CRASH_SEED"   // replays a failing schedule
)

// The replicas run the engine's default settings (engine.Config{}): failover is decided by the lease alone.

var (
	crashSequential = []string{"s1", "s2", "s3", "s4", "s5"}
	crashParallel   = []string{"p1", "p2", "p3"}
	// crashAgentSteps are the steps that call the agent: the side effects that must happen once each.
	crashAgentSteps = slices.Concat(crashSequential, crashParallel, []string{"join"})
	// crashAllSteps adds the parallel step, which records an output but calls nobody.
	crashAllSteps = append(slices.Clone(crashAgentSteps), "fan")
)

// crashBlueprint is five sequential agent steps, a parallel fan-out of three, and a join. Each agent is named
// after its step and gets the run's label as input, so the side-effect log says which (run, step) it served.
func crashBlueprint() string {
	var b strings.Builder
	b.WriteString("name: crash\ninput_schema: {type: object, required: [label], properties: {label: {type: string}}}\nsteps:\n")
	agentStep := func(id, dep string) {
		fmt.Fprintf(&b, "  - id: %s\n    retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s}\n", id)
		if dep != "" {
			fmt.Fprintf(&b, "    depends_on: [%s]\n", dep)
		}
		fmt.Fprintf(&b, "    agent: {agent: %s, input: \"input.label\"}\n", id)
	}
	prev := ""
	for _, id := range crashSequential {
		agentStep(id, prev)
		prev = id
	}
	fmt.Fprintf(&b, "  - id: fan\n    depends_on: [%s]\n    parallel: {steps: [%s]}\n", prev, strings.Join(crashParallel, ", "))
	for _, id := range crashParallel {
		agentStep(id, "")
	}
	agentStep("join", "fan")
	return b.String()
}

// TestHelperProcess is not a test: it is a replica of the crash test, started by it in a child process. It
// executes runs until it is killed.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(envCrashHelper) != "1" {
		return
	}
	if err := runReplica(os.Getenv(envCrashDB), os.Getenv(envCrashLog)); err != nil {
		fmt.Fprintln(os.Stderr, "replica:", err)
		os.Exit(3)
	}
}

func runReplica(url, logPath string) error {
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	agents := &sideEffectAgents{f: f, AgentAt: orchestratortest.AgentAt{Version: crashAgentVersion + 1}} // a newer one than the runs pinned
	db, err := sqldb.Open(ctx, url)
	if err != nil {
		return err
	}
	cfg := engine.Config{} // the defaults: what `loom serve` runs
	eng, err := engine.New(ctx, logger, db, agents, nil, cfg)
	if err != nil {
		return err
	}
	if err := eng.Start(ctx); err != nil {
		return err
	}
	select {} // until SIGKILL
}

// sideEffectAgents is an agent whose every call performs a side effect: one line appended to a shared log (one
// write(2), which a SIGKILL cannot tear) before it answers. Unlike the real agent service it does not
// deduplicate, so a replayed key shows up as a second line with the same key.
type sideEffectAgents struct {
	orchestratortest.AgentAt
	mu sync.Mutex
	f  *os.File
}

// crashAgentVersion is the agent version the parent pins every run to: a call of another version fails its run.
const crashAgentVersion = 7

func (a *sideEffectAgents) RunStream(ctx context.Context, req *agentv1.RunStreamRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[agentv1.RunStreamResponse], error) {
	return orchestratortest.StreamRun(ctx, req, a.Run, true)
}

func (a *sideEffectAgents) Run(ctx context.Context, req *agentv1.RunRequest, _ ...grpc.CallOption) (*agentv1.RunResponse, error) {
	if v := req.GetAgentVersion(); v != crashAgentVersion {
		// Every owner, a replica that took the run over included, runs the version recorded at the start.
		return nil, status.Errorf(codes.InvalidArgument, "agent version %d, want the pinned %d", v, crashAgentVersion)
	}
	if err := a.log("call", req); err != nil {
		return nil, err
	}
	select {
	case <-time.After(time.Duration(50+rand.IntN(250)) * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := a.log("effect", req); err != nil {
		return nil, err
	}
	return &agentv1.RunResponse{Run: &agentv1.Run{Id: "agent-run-" + req.GetIdempotencyKey(), Agent: req.GetAgent(),
		Input: req.GetInput(), Output: req.GetAgent() + ":" + req.GetInput(), IdempotencyKey: req.GetIdempotencyKey(),
		State: agentv1.RunState_RUN_STATE_SUCCEEDED}}, nil
}

// log appends "label step key kind pid": kind "call" when a request arrives, "effect" once the work is done.
func (a *sideEffectAgents) log(kind string, req *agentv1.RunRequest) error {
	line := fmt.Sprintf("%s\t%s\t%s\t%s\t%d\n", req.GetInput(), req.GetAgent(), req.GetIdempotencyKey(), kind, os.Getpid())
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.WriteString(line); err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	return nil
}

// TestCrashRecovery kills replicas with SIGKILL at random moments in the middle of runs, restarts them, and
// checks that every run still succeeds with every step done exactly once: no lost step, no step whose side
// effect happened under two idempotency keys. SQLite runs one replica (embedded mode, restarted after each
// kill); Postgres runs two. Both print the failover time: from the kill until every step that was running at
// that moment has been resumed (a new attempt recorded) or has finished. Set LOOM_CRASH_SEED to replay a schedule.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes for about a minute; skipped with -short")
	}
	t.Parallel()
	for _, tc := range []struct {
		dialect  sqldb.Dialect
		replicas int
		kills    int
	}{
		{dialect: sqldb.SQLite, replicas: 1, kills: 6},
		{dialect: sqldb.Postgres, replicas: 2, kills: 5},
	} {
		t.Run(string(tc.dialect), func(t *testing.T) {
			t.Parallel()
			crashRecovery(t, tc.dialect, tc.replicas, tc.kills)
		})
	}
}

func crashRecovery(t *testing.T, dialect sqldb.Dialect, replicas, kills int) {
	const runs = 10
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envCrashSeed); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", envCrashSeed, err)
		}
	}
	t.Logf("seed=%d (replay with %s=%d)", seed, envCrashSeed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	// The parent migrates the database and starts runs; it never works a job.
	db, url := openShared(t, dialect)
	e := &env{}
	var err error
	if e.store, err = sqlstore.New(ctx, db); err != nil {
		t.Fatal(err)
	}
	if e.engine, err = engine.New(ctx, nil, db, orchestratortest.AgentAt{Version: crashAgentVersion}, nil, engine.Config{}); err != nil {
		t.Fatal(err)
	}
	bp := e.create(t, crashBlueprint())

	dir := t.TempDir()
	logPath := filepath.Join(dir, "agent.log")
	procs := make([]*exec.Cmd, replicas)
	var stderrs []string
	start := func(i int) {
		stderr := filepath.Join(dir, fmt.Sprintf("replica-%d-%d.stderr", i, len(stderrs)))
		stderrs = append(stderrs, stderr)
		f, err := os.Create(stderr)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), envCrashHelper+"=1", envCrashDB+"="+url, envCrashLog+"="+logPath)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[i] = cmd
	}
	kill := func(i int) {
		if procs[i] == nil {
			return
		}
		_ = procs[i].Process.Signal(syscall.SIGKILL)
		_ = procs[i].Wait()
		procs[i] = nil
	}
	t.Cleanup(func() {
		for i := range procs {
			kill(i)
		}
		if t.Failed() {
			for _, p := range stderrs {
				if b, _ := os.ReadFile(p); len(b) > 0 {
					t.Logf("%s:\n%s", filepath.Base(p), b[max(0, len(b)-4000):])
				}
			}
		}
	})
	for i := range procs {
		start(i)
	}

	// Start the runs in waves between the kills, so that kills land in every phase of a run.
	ids := make([]string, runs)
	started := 0
	startRuns := func(n int) {
		for ; n > 0 && started < runs; n-- {
			r, err := e.engine.StartRun(ctx, tenant, bp, input(t, map[string]any{"label": fmt.Sprintf("r%02d", started)}), "")
			if err != nil {
				t.Fatalf("StartRun() error = %v", err)
			}
			ids[started] = r.GetId()
			started++
		}
	}
	var (
		mu        sync.Mutex
		failovers []time.Duration
		watchers  sync.WaitGroup
	)
	done := 0
	startRuns(runs / 2)
	for k := 0; k < kills; k++ {
		startRuns((runs/2 + kills - 1) / kills)
		time.Sleep(time.Duration(300+rng.IntN(1700)) * time.Millisecond)
		// Kill in the middle of a step: wait (briefly) for work in flight, then a random jitter more.
		for wait := time.Now().Add(2 * time.Second); len(runningSteps(t, db)) == 0 && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond)
		victim := rng.IntN(replicas)
		kill(victim)
		killed := time.Now()
		// The steps running at the moment of the kill: the dead replica's wait for another owner.
		stuck := runningSteps(t, db)
		done++
		if len(stuck) > 0 {
			watchers.Add(1)
			go func() {
				defer watchers.Done()
				if d, ok := waitResumed(db, stuck, killed, 80*time.Second); ok {
					mu.Lock()
					failovers = append(failovers, d)
					mu.Unlock()
				}
			}()
		}
		// With two replicas the last victim stays dead: the survivor must finish everything alone.
		if replicas == 1 || k < kills-1 {
			start(victim)
		}
	}
	startRuns(runs)

	// Wait for every run to end.
	deadline := time.Now().Add(80 * time.Second)
	var final []*orchestratorv1.WorkflowRun
	for {
		final = final[:0]
		ended := 0
		for _, id := range ids {
			r, err := e.engine.GetRun(ctx, tenant, id)
			if err != nil {
				t.Fatalf("GetRun() error = %v", err)
			}
			final = append(final, r)
			if isEnded(r.GetState()) {
				ended++
			}
		}
		if ended == runs || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	watchers.Wait()

	// Count. A step is lost if it did not succeed with its output, or its agent never saw it; duplicated if it
	// recorded more than one output, or its agent saw more than one idempotency key (two distinct side effects).
	calls := readSideEffects(t, logPath)
	var lost, duplicated, steps, replays, failedRuns int
	for i, r := range final {
		label := fmt.Sprintf("r%02d", i)
		if r.GetState() != orchestratorv1.RunState_RUN_STATE_SUCCEEDED {
			failedRuns++
			t.Errorf("run %s (%s) = %s %q", label, r.GetId(), r.GetState(), r.GetError())
		}
		events := checkEvents(t, e, r)
		outputs := map[string]int{}
		for _, ev := range events {
			if ev.GetStepOutput() != nil {
				outputs[ev.GetStepId()]++
			}
		}
		for _, id := range crashAllSteps {
			steps++
			s := stepState(r, id)
			switch {
			case s.GetState() != orchestratorv1.StepState_STEP_STATE_SUCCEEDED || s.GetOutput() == nil || outputs[id] == 0:
				lost++
				t.Errorf("run %s step %s: %s, %d outputs: lost", label, id, s.GetState(), outputs[id])
			case outputs[id] > 1:
				duplicated++
				t.Errorf("run %s step %s: %d outputs recorded", label, id, outputs[id])
			}
			if id == "fan" {
				continue
			}
			if want := id + ":" + label; s.GetOutput() != nil && s.GetOutput().GetStringValue() != want {
				t.Errorf("run %s step %s output = %v, want %q", label, id, s.GetOutput(), want)
			}
			l := calls[label+"/"+id]
			if l == nil {
				l = &agentLog{}
			}
			// Every call of a step, the ones cut short by a kill included, must carry the same key.
			distinct := map[string]bool{}
			for _, k := range slices.Concat(l.calls, l.effects) {
				distinct[k] = true
			}
			replays += len(l.calls) - 1
			switch {
			case len(l.effects) == 0:
				lost++
				t.Errorf("run %s step %s: the agent never did it", label, id)
			case len(distinct) > 1:
				duplicated++
				t.Errorf("run %s step %s: %d idempotency keys over %d calls", label, id, len(distinct), len(l.calls))
			}
		}
	}
	slices.Sort(failovers)
	var worst time.Duration
	if len(failovers) > 0 {
		worst = failovers[len(failovers)-1]
	}
	nCalls, nEffects := countCalls(calls)
	t.Logf("kills=%d replicas=%d runs=%d steps=%d agent_calls=%d effects=%d calls_repeated_with_same_key=%d failed_runs=%d lost=%d duplicated=%d",
		done, replicas, runs, steps, nCalls, nEffects, replays, failedRuns, lost, duplicated)
	var p50 time.Duration
	if len(failovers) > 0 {
		p50 = failovers[len(failovers)/2]
	}
	t.Logf("failover (kill -> every step running at the kill resumed or finished) over %d kills: %v; p50 %v, worst %v (target p50 <= 5s; default lease %v)",
		len(failovers), roundAll(failovers), p50.Round(10*time.Millisecond), worst.Round(10*time.Millisecond), 3*time.Second)
	// Not a timing assertion: beyond this a step is stuck, not slow (a lease lapses after 3 s, a claim polls
	// every second).
	if bound := 60 * time.Second; worst > bound {
		t.Errorf("worst failover %v exceeds %v: a step was stranded", worst, bound)
	}
}

func isEnded(s orchestratorv1.RunState) bool {
	return s == orchestratorv1.RunState_RUN_STATE_SUCCEEDED || s == orchestratorv1.RunState_RUN_STATE_FAILED ||
		s == orchestratorv1.RunState_RUN_STATE_CANCELLED
}

// stepAttempt is a running step and the attempts recorded for it.
type stepAttempt struct {
	run, step string
	attempts  int64
}

// runningSteps lists the steps in the running state.
func runningSteps(t *testing.T, db *sqldb.DB) []stepAttempt {
	t.Helper()
	odb := db.Component(sqldb.OrchestratorComponent)
	rs, err := db.QueryContext(context.Background(), odb.Rebind(`SELECT run_id, step_id, attempts FROM loom.run_steps WHERE state = ?`),
		int64(orchestratorv1.StepState_STEP_STATE_RUNNING))
	if err != nil {
		t.Fatalf("running steps: %v", err)
	}
	defer rs.Close()
	var out []stepAttempt
	for rs.Next() {
		var s stepAttempt
		if err := rs.Scan(&s.run, &s.step, &s.attempts); err != nil {
			t.Fatalf("running steps: %v", err)
		}
		out = append(out, s)
	}
	return out
}

// waitResumed waits until every step in steps has finished or has recorded a new attempt (another owner resumed
// it), and returns how long after since that was.
func waitResumed(db *sqldb.DB, steps []stepAttempt, since time.Time, limit time.Duration) (time.Duration, bool) {
	q := db.Component(sqldb.OrchestratorComponent).Rebind(`SELECT state, attempts FROM loom.run_steps WHERE run_id = ? AND step_id = ?`)
	pending := slices.Clone(steps)
	for time.Since(since) < limit {
		pending = slices.DeleteFunc(pending, func(s stepAttempt) bool {
			var (
				state    int64
				attempts int64
			)
			if err := db.QueryRowContext(context.Background(), q, s.run, s.step).Scan(&state, &attempts); err != nil {
				return false
			}
			return orchestratorv1.StepState(state) != orchestratorv1.StepState_STEP_STATE_RUNNING || attempts > s.attempts
		})
		if len(pending) == 0 {
			return time.Since(since), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, false
}

type agentLog struct {
	calls, effects []string // idempotency keys, one per line
}

// readSideEffects reads the fake agent's log, by "label/step".
func readSideEffects(t *testing.T, path string) map[string]*agentLog {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]*agentLog{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) != 5 {
			t.Fatalf("side-effect log line %q", sc.Text())
		}
		l := out[fields[0]+"/"+fields[1]]
		if l == nil {
			l = &agentLog{}
			out[fields[0]+"/"+fields[1]] = l
		}
		if fields[3] == "effect" {
			l.effects = append(l.effects, fields[2])
		} else {
			l.calls = append(l.calls, fields[2])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func countCalls(logs map[string]*agentLog) (calls, effects int) {
	for _, l := range logs {
		calls, effects = calls+len(l.calls), effects+len(l.effects)
	}
	return calls, effects
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(100 * time.Millisecond)
	}
	return out
}
