package engine

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/reflect/protoreflect"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/sqldb"
)

// Metrics are the run engine's Prometheus metrics:
//
//   - loom_workflow_runs_finished_total{state}: runs that reached a terminal state ("succeeded", "failed",
//     "canceled"), counted once, by the process whose write ended the run;
//   - loom_workflow_step_duration_seconds{kind}: how long the calls of agent, map and memory steps took, by step
//     kind (the name of the Step's kind field: "agent", "map", "memory_search", "memory_upsert"), whatever
//     their outcome; the wait for a free worker is not included;
//   - loom_workflow_queue_lag_seconds: how long the oldest run that is due and owned by no replica (never
//     claimed, released, or whose owner's lease lapsed) has waited for one; 0 when none waits;
//   - loom_workflow_pending_approvals: approval steps waiting for a decision;
//   - loom_workflow_run_anomalies_total{kind}: finished runs whose cost or duration ("cost", "duration") was above
//     the p99 forecast from their blueprint version's earlier runs.
//
// The counter and the histogram are this process's; the two gauges are read from the database at scrape time
// (one query, bounded by 2 s), so every replica reports the same values. Create Metrics with [NewMetrics], pass
// them to one Engine in Config.Metrics and register them with a Prometheus registry. Safe for concurrent use.
type Metrics struct {
	finished  *prometheus.CounterVec
	steps     *prometheus.HistogramVec
	anomalies *prometheus.CounterVec

	mu sync.Mutex
	e  *Engine // whose database the gauges read; nil until an Engine is built with these Metrics
}

var (
	descQueueLag = prometheus.NewDesc("loom_workflow_queue_lag_seconds",
		"Age of the oldest workflow run that is due and owned by no orchestrator replica (not claimed yet, released, or whose owner's lease lapsed); 0 when none waits.", nil, nil)
	descPendingApprovals = prometheus.NewDesc("loom_workflow_pending_approvals",
		"Approval steps of workflow runs waiting for a decision.", nil, nil)
)

// gaugeTimeout bounds the query behind the gauges, so a database that hangs cannot hang the scrape.
const gaugeTimeout = 2 * time.Second

// NewMetrics returns the engine's metrics, not yet bound to an Engine: until one is built with them they export
// the counter (every state at 0) and the histogram, without the two gauges.
func NewMetrics() *Metrics {
	m := &Metrics{
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_workflow_runs_finished_total",
			Help: "Workflow runs that reached a terminal state, by state (succeeded, failed, canceled).",
		}, []string{"state"}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_workflow_step_duration_seconds",
			Help:    "Duration of one attempt of a workflow step's call (agent, map, memory_search, memory_upsert), by step kind, whatever its outcome.",
			Buckets: []float64{0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"kind"}),
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_workflow_run_anomalies_total",
			Help: "Finished workflow runs whose cost or duration (kind) was above the p99 forecast from their blueprint version's earlier runs.",
		}, []string{"kind"}),
	}
	m.anomalies.WithLabelValues("cost")
	m.anomalies.WithLabelValues("duration")
	// Every state from 0, so that rate() sees the first run of each.
	for _, s := range []orchestratorv1.RunState{orchestratorv1.RunState_RUN_STATE_SUCCEEDED,
		orchestratorv1.RunState_RUN_STATE_FAILED, orchestratorv1.RunState_RUN_STATE_CANCELLED} {
		m.finished.WithLabelValues(stateLabel(s))
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.finished.Describe(ch)
	m.steps.Describe(ch)
	m.anomalies.Describe(ch)
	ch <- descQueueLag
	ch <- descPendingApprovals
}

// Collect implements prometheus.Collector. The gauges are left out when the database does not answer (the
// error is logged): a scrape never fails for them.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.finished.Collect(ch)
	m.steps.Collect(ch)
	m.anomalies.Collect(ch)
	m.mu.Lock()
	e := m.e
	m.mu.Unlock()
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), gaugeTimeout)
	defer cancel()
	lag, pending, err := e.queueGauges(ctx)
	if err != nil {
		e.logger.WarnContext(ctx, "engine: metrics: read queue lag and pending approvals", slog.Any("error", err))
		return
	}
	ch <- prometheus.MustNewConstMetric(descQueueLag, prometheus.GaugeValue, lag.Seconds())
	ch <- prometheus.MustNewConstMetric(descPendingApprovals, prometheus.GaugeValue, float64(pending))
}

// bind makes the gauges read e's database.
func (m *Metrics) bind(e *Engine) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.e = e
	m.mu.Unlock()
}

// runFinished counts a run that reached state. A nil *Metrics does nothing.
func (m *Metrics) runFinished(state orchestratorv1.RunState) {
	if m == nil {
		return
	}
	m.finished.WithLabelValues(stateLabel(state)).Inc()
}

// stepDone records one attempt of a step of kind. A nil *Metrics does nothing.
func (m *Metrics) stepDone(kind string, d time.Duration) {
	if m == nil {
		return
	}
	m.steps.WithLabelValues(kind).Observe(d.Seconds())
}

func stateLabel(s orchestratorv1.RunState) string {
	switch s {
	case orchestratorv1.RunState_RUN_STATE_SUCCEEDED:
		return "succeeded"
	case orchestratorv1.RunState_RUN_STATE_FAILED:
		return "failed"
	case orchestratorv1.RunState_RUN_STATE_CANCELLED:
		return "canceled"
	}
	return "unknown"
}

// stepKindOneof is the Step's kind oneof: a step's kind label is the name of its field that is set, so a new
// kind in the contract is labelled without a change here.
var stepKindOneof = (&orchestratorv1.Step{}).ProtoReflect().Descriptor().Oneofs().ByName("kind")

// stepKind is the name of the kind field set in d ("agent", "map", "memory_search", ...), or "unknown".
func stepKind(d *orchestratorv1.Step) string {
	var f protoreflect.FieldDescriptor
	if stepKindOneof != nil {
		f = d.ProtoReflect().WhichOneof(stepKindOneof)
	}
	if f == nil {
		return "unknown"
	}
	return string(f.Name())
}

// queueGauges reads the queue lag and the pending approvals in one query. A run waits for an owner since the
// latest of when it was created, when it came due (due_time) and when its lease lapsed or was released
// (lease_until); it is counted while it is unfinished, due and nobody holds a live lease on it.
func (e *Engine) queueGauges(ctx context.Context) (time.Duration, int64, error) {
	greatest := "GREATEST"
	if e.db.Dialect == sqldb.SQLite {
		greatest = "MAX" // SQLite's MAX with several arguments is the scalar one
	}
	now := e.now()
	var oldest, pending int64
	err := queryRow(ctx, e.reader(), `SELECT
		(SELECT COALESCE(MIN(`+greatest+`(due_time, lease_until, create_time)), 0) FROM loom.runs
			WHERE end_time = 0 AND due_time <= ? AND lease_until < ?),
		(SELECT COUNT(*) FROM loom.run_steps WHERE state = `+waitingState+`)`,
		[]any{now.UnixMicro(), now.UnixMicro()}, &oldest, &pending)
	if err != nil {
		return 0, 0, err
	}
	if oldest == 0 {
		return 0, pending, nil
	}
	return max(now.Sub(time.UnixMicro(oldest)), 0), pending, nil
}
