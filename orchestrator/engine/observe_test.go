package engine_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratortest"
)

const (
	okBlueprint = `
name: ok
steps:
  - id: a
    agent: {agent: writer, input: "'x'"}
  - id: b
    depends_on: [a]
    agent: {agent: writer, input: "'y'"}
`
	brokenBlueprint = `
name: broken
steps:
  - id: a
    agent: {agent: ghost, input: "'x'"}
`
	approvalBlueprint = `
name: gate
steps:
  - id: review
    approval: {prompt: "OK?"}
`
)

// ghostAgents answers every agent but "ghost", which does not exist (NotFound: the step fails at once).
func ghostAgents() *orchestratortest.Agents {
	return &orchestratortest.Agents{Respond: func(_ context.Context, req *agentv1.RunRequest) (string, error) {
		if req.GetAgent() == "ghost" {
			return "", status.Error(grpccodes.NotFound, "no such agent")
		}
		return req.GetAgent() + ": " + req.GetInput(), nil
	}}
}

// point is one series of a gathered metric: its labels, and its value (a gauge's or a counter's) or its
// sample count (a histogram's).
type point struct {
	labels map[string]string
	value  float64
	count  uint64
}

// gather collects m through a pedantic registry (which checks that what it describes is what it collects),
// fails on a metric without help text, and returns the series of the metric name.
func gather(t *testing.T, m *engine.Metrics, name string) []point {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	var out []point
	for _, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("metric %s has no help text", f.GetName())
		}
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			p := point{labels: map[string]string{}, count: s.GetHistogram().GetSampleCount(),
				value: s.GetGauge().GetValue() + s.GetCounter().GetValue()}
			for _, l := range s.GetLabel() {
				p.labels[l.GetName()] = l.GetValue()
			}
			out = append(out, p)
		}
	}
	return out
}

// values returns the runs counter and the two gauges of m, by series.
func values(t *testing.T, m *engine.Metrics) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, p := range gather(t, m, "loom_workflow_runs_finished_total") {
		out[`loom_workflow_runs_finished_total{state="`+p.labels["state"]+`"}`] = p.value
	}
	for _, name := range []string{"loom_workflow_pending_approvals", "loom_workflow_queue_lag_seconds"} {
		for _, p := range gather(t, m, name) {
			out[name] = p.value
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		m := engine.NewMetrics()
		e := newEnv(t, d, ghostAgents(), func(c *engine.Config) { c.Metrics = m })
		ctx := context.Background()
		ok, err := e.engine.StartRun(ctx, tenant, e.create(t, okBlueprint), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		broken, err := e.engine.StartRun(ctx, tenant, e.create(t, brokenBlueprint), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		gate, err := e.engine.StartRun(ctx, tenant, e.create(t, approvalBlueprint), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		e.waitFor(t, ok.GetId(), orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
		e.waitFor(t, broken.GetId(), orchestratorv1.RunState_RUN_STATE_FAILED)
		e.waitFor(t, gate.GetId(), orchestratorv1.RunState_RUN_STATE_WAITING)
		// Stop waits for the owners, which count a run once its end is committed: what follows reads settled
		// values, without waiting for them.
		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := e.engine.Stop(stopCtx); err != nil {
			t.Fatal(err)
		}

		want := map[string]float64{
			`loom_workflow_runs_finished_total{state="succeeded"}`: 1,
			`loom_workflow_runs_finished_total{state="failed"}`:    1,
			`loom_workflow_runs_finished_total{state="canceled"}`:  0,
			`loom_workflow_pending_approvals`:                      1,
			`loom_workflow_queue_lag_seconds`:                      0,
		}
		if diff := cmp.Diff(want, values(t, m)); diff != "" {
			t.Errorf("after a success, a failure and an approval (-want +got):\n%s", diff)
		}

		if _, err := e.engine.CancelRun(ctx, tenant, gate.GetId(), "no"); err != nil {
			t.Fatal(err)
		}
		want[`loom_workflow_runs_finished_total{state="canceled"}`] = 1
		want[`loom_workflow_pending_approvals`] = 0
		if diff := cmp.Diff(want, values(t, m)); diff != "" {
			t.Errorf("after cancelling the waiting run (-want +got):\n%s", diff)
		}

		steps := gather(t, m, "loom_workflow_step_duration_seconds")
		if len(steps) != 1 || len(steps[0].labels) != 1 || steps[0].labels["kind"] != "agent" {
			t.Fatalf("step duration series = %v, want one, kind=agent", steps)
		}
		if got := steps[0].count; got != 3 {
			t.Errorf("agent step attempts timed = %d, want 3 (two of ok, one of broken)", got)
		}
	})
}

func TestMetricsQueueLag(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		var clock atomic.Int64
		clock.Store(start.UnixMicro())
		m := engine.NewMetrics()
		e, open := newStoppedEnv(t, d, nil, func(c *engine.Config) {
			c.Metrics = m
			c.Now = func() time.Time { return time.UnixMicro(clock.Load()) }
		})
		// An engine that is not started does not own the runs it starts: they wait in the database for a replica.
		e.engine = open(false)
		bp := e.create(t, okBlueprint)
		lag := func() float64 {
			t.Helper()
			p := gather(t, m, "loom_workflow_queue_lag_seconds")
			if len(p) != 1 {
				t.Fatalf("queue lag = %v, want one gauge", p)
			}
			return p[0].value
		}
		if got := lag(); got != 0 {
			t.Errorf("queue lag with no runs = %v, want 0", got)
		}
		if _, err := e.engine.StartRun(context.Background(), tenant, bp, nil, ""); err != nil {
			t.Fatal(err)
		}
		clock.Store(start.Add(30 * time.Second).UnixMicro())
		if _, err := e.engine.StartRun(context.Background(), tenant, bp, nil, ""); err != nil {
			t.Fatal(err)
		}
		clock.Store(start.Add(90 * time.Second).UnixMicro())
		if got := lag(); got != 90 {
			t.Errorf("queue lag = %v, want 90 (the older of two unclaimed runs)", got)
		}
	})
}

// spanAgents records the span context each agent call is made in.
type spanAgents struct {
	*orchestratortest.Agents
	mu    sync.Mutex
	spans map[string]trace.SpanContext // by agent input
}

func newSpanAgents() *spanAgents {
	a := &spanAgents{spans: map[string]trace.SpanContext{}}
	base := ghostAgents()
	a.Agents = &orchestratortest.Agents{Respond: func(ctx context.Context, req *agentv1.RunRequest) (string, error) {
		a.mu.Lock()
		a.spans[req.GetIdempotencyKey()] = trace.SpanContextFromContext(ctx)
		a.mu.Unlock()
		return base.Respond(ctx, req)
	}}
	return a
}

func TestStepSpansAreChildrenOfStartRun(t *testing.T) {
	forEachDialect(t, func(t *testing.T, d sqldb.Dialect) {
		exp := tracetest.NewInMemoryExporter()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		agents := newSpanAgents()
		e, open := newStoppedEnv(t, d, agents.Agents, func(c *engine.Config) { c.TracerProvider = tp })
		ctx := context.Background()
		bpOK, bpBroken := e.create(t, okBlueprint), e.create(t, brokenBlueprint)

		startRun := func(eng *engine.Engine, bp *orchestratorv1.Blueprint) (string, trace.SpanContext) {
			t.Helper()
			ctx, parent := tp.Tracer("test").Start(ctx, "StartRun")
			defer parent.End()
			r, err := eng.StartRun(ctx, tenant, bp, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			return r.GetId(), parent.SpanContext()
		}
		// Taken over: started by a process that does not execute it, so its owner reads the trace context from
		// the database, as after a crash.
		idle := open(false)
		takenID, takenParent := startRun(idle, bpOK)
		e.engine = open(true)
		// Owned from the start by the process that started it.
		ownID, ownParent := startRun(e.engine, bpOK)
		brokenID, brokenParent := startRun(e.engine, bpBroken)
		e.waitFor(t, takenID, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
		e.waitFor(t, ownID, orchestratorv1.RunState_RUN_STATE_SUCCEEDED)
		e.waitFor(t, brokenID, orchestratorv1.RunState_RUN_STATE_FAILED)

		// A step's span ends before its outcome reaches the owner, so every span of a finished run is exported.
		type key struct{ run, step string }
		steps := map[key]tracetest.SpanStub{}
		for _, s := range exp.GetSpans() {
			if s.Name == "StartRun" {
				continue
			}
			attrs := map[attribute.Key]string{}
			for _, kv := range s.Attributes {
				attrs[kv.Key] = kv.Value.String()
			}
			if s.Name != "step agent" || attrs["loom.run.id"] == "" || attrs["loom.step.id"] == "" || attrs["loom.step.attempt"] != "1" {
				t.Errorf("span %q attributes %v, want a step agent span with the run, the step and attempt 1", s.Name, attrs)
				continue
			}
			steps[key{attrs["loom.run.id"], attrs["loom.step.id"]}] = s
		}
		tests := []struct {
			run, step string
			parent    trace.SpanContext
			failed    bool
		}{
			{run: takenID, step: "a", parent: takenParent},
			{run: takenID, step: "b", parent: takenParent},
			{run: ownID, step: "a", parent: ownParent},
			{run: ownID, step: "b", parent: ownParent},
			{run: brokenID, step: "a", parent: brokenParent, failed: true},
		}
		if len(steps) != len(tests) {
			t.Errorf("step spans = %d, want %d", len(steps), len(tests))
		}
		agents.mu.Lock()
		defer agents.mu.Unlock()
		for _, tt := range tests {
			s, ok := steps[key{tt.run, tt.step}]
			if !ok {
				t.Errorf("run %s step %s: no span", tt.run, tt.step)
				continue
			}
			if s.SpanContext.TraceID() != tt.parent.TraceID() || s.Parent.SpanID() != tt.parent.SpanID() {
				t.Errorf("run %s step %s: span in trace %s under %s, want trace %s under StartRun's span %s", tt.run, tt.step,
					s.SpanContext.TraceID(), s.Parent.SpanID(), tt.parent.TraceID(), tt.parent.SpanID())
			}
			if failed := s.Status.Code == codes.Error; failed != tt.failed || failed && len(s.Events) == 0 {
				t.Errorf("run %s step %s: status %v with %d events, want failed = %v with the error recorded", tt.run, tt.step, s.Status, len(s.Events), tt.failed)
			}
			// The agent was called in the step's span, so the client's spans are its children.
			var called bool
			for _, sc := range agents.spans {
				called = called || sc.SpanID() == s.SpanContext.SpanID()
			}
			if !called {
				t.Errorf("run %s step %s: no agent call was made in the step's span", tt.run, tt.step)
			}
		}
	})
}
