package engine

import (
	"cmp"
	"context"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/internal/forecast"
	"github.com/loom-dev/loom/internal/pricing"
)

// Usage and cost: a step's usage is the sum of what its attempts' agent runs reported (the agent service prices
// them; the engine only adds, exactly, in nano-units); a run's is the sum of its steps'. Forecasts are quantiles
// over a blueprint version's recent successful runs (internal/forecast).

// minAnomalySample is the fewest earlier successful runs of a version a p99 is trusted from for anomaly flags.
const minAnomalySample = 20

// anomalyWindow is how many of a version's latest successful runs the anomaly flag's forecast is taken over.
const anomalyWindow = 200

// addUsage returns dst + src; either may be nil (nil + nil is nil).
func addUsage(dst, src *orchestratorv1.Usage) *orchestratorv1.Usage {
	if src == nil {
		return dst
	}
	if dst == nil {
		return proto.CloneOf(src)
	}
	out := &orchestratorv1.Usage{InputTokens: dst.GetInputTokens() + src.GetInputTokens(),
		OutputTokens: dst.GetOutputTokens() + src.GetOutputTokens(), CachedInputTokens: dst.GetCachedInputTokens() + src.GetCachedInputTokens(),
		CostUnknown: dst.GetCostUnknown() || src.GetCostUnknown(), AgentRuns: dst.GetAgentRuns() + src.GetAgentRuns(),
		Cost: pricing.SumMoney(dst.GetCost(), src.GetCost())}
	return out
}

// agentUsage is an agent run's rolled-up usage as one agent run; nil stays nil.
func agentUsage(u *agentv1.Usage) *orchestratorv1.Usage {
	if u == nil {
		return nil
	}
	return &orchestratorv1.Usage{InputTokens: u.GetInputTokens(), OutputTokens: u.GetOutputTokens(),
		CachedInputTokens: u.GetCachedInputTokens(), Cost: u.GetCost(), CostUnknown: u.GetCostUnknown(), AgentRuns: 1}
}

// usageInError is the usage of the run an agent error carries in its details (a run stopped by a budget), nil
// when it carries none.
func usageInError(err error) *orchestratorv1.Usage {
	for _, d := range status.Convert(err).Details() {
		if run, ok := d.(*agentv1.Run); ok {
			return agentUsage(run.GetUsage())
		}
	}
	return nil
}

// budgetExhausted reports whether a ResourceExhausted error names a spending budget (QuotaFailure with a
// "tenant." or "agent." subject) rather than a rate limit.
func budgetExhausted(err error) bool {
	for _, d := range status.Convert(err).Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok {
			for _, v := range qf.GetViolations() {
				if strings.HasPrefix(v.GetSubject(), "tenant.") || strings.HasPrefix(v.GetSubject(), "agent.") {
					return true
				}
			}
		}
	}
	return false
}

func (s *step) addUsage(u *orchestratorv1.Usage) {
	if u == nil {
		return
	}
	s.usage, s.usageDirty, s.dirty = addUsage(s.usage, u), true, true
}

// usage is the sum of the steps' usage, never nil.
func (r *run) usage() *orchestratorv1.Usage {
	var total *orchestratorv1.Usage
	for _, s := range r.steps {
		total = addUsage(total, s.usage)
	}
	if total == nil {
		return &orchestratorv1.Usage{}
	}
	return total
}

// usageChanges writes the usage of steps whose usage changed, in the same transaction as their rows.
func (r *run) usageChanges() []stmt {
	var out []stmt
	for _, s := range r.steps {
		if !s.usageDirty {
			continue
		}
		b, err := marshal(s.usage)
		if err != nil {
			continue // a Usage always marshals
		}
		out = append(out, stmt{`UPDATE loom.run_steps SET usage = ? WHERE run_id = ? AND step_id = ?`, []any{b, r.id, s.id}})
		s.usageDirty = false
	}
	return out
}

// sample is one earlier run: its duration and cost, and its steps'.
type sample struct {
	id       string
	duration int64 // nanoseconds
	cost     int64 // nano-units
	steps    map[string][2]int64
	currency string
}

// history reads up to n of the latest SUCCEEDED runs of a blueprint version, newest first, but id. With
// perStep it reads every step's duration and cost too; without, only each run's duration and cost (the steps
// that have usage): what the anomaly check after every run needs, a fraction of the rows for a wide blueprint.
func (e *Engine) history(ctx context.Context, tenant, blueprint string, version int64, n int, except string, perStep bool) ([]sample, error) {
	q := e.replicaReader(ctx)
	rs, done, err := q.query(ctx, `SELECT id, create_time, end_time FROM loom.runs WHERE tenant = ? AND blueprint = ?
		AND blueprint_version = ? AND state = ? AND id <> ? ORDER BY create_time DESC LIMIT ?`,
		tenant, blueprint, version, int64(orchestratorv1.RunState_RUN_STATE_SUCCEEDED), except, n)
	if err != nil {
		return nil, err
	}
	var out []sample
	byID := map[string]*sample{}
	for rs.Next() {
		var (
			s      sample
			ct, et int64
		)
		if err := rs.Scan(&s.id, &ct, &et); err != nil {
			done()
			return nil, err
		}
		s.duration, s.steps = (et-ct)*int64(time.Microsecond), map[string][2]int64{}
		out = append(out, s)
	}
	err = rs.Err()
	done()
	if err != nil || len(out) == 0 {
		return out, err
	}
	ids := make([]any, len(out))
	marks := make([]string, len(out))
	for i := range out {
		ids[i], marks[i] = out[i].id, "?"
		byID[out[i].id] = &out[i]
	}
	filter := ""
	if !perStep {
		filter = " AND usage IS NOT NULL"
	}
	rs, done, err = q.query(ctx, `SELECT run_id, step_id, state, start_time, end_time, usage FROM loom.run_steps
		WHERE run_id IN (`+strings.Join(marks, ", ")+`)`+filter, ids...)
	if err != nil {
		return nil, err
	}
	defer done()
	for rs.Next() {
		var (
			runID, stepID string
			state, st, en int64
			usage         []byte
		)
		if err := rs.Scan(&runID, &stepID, &state, &st, &en, &usage); err != nil {
			return nil, err
		}
		s := byID[runID]
		var cost int64
		if len(usage) > 0 {
			var u orchestratorv1.Usage
			if proto.Unmarshal(usage, &u) == nil {
				c, _ := pricing.FromMoney(u.GetCost())
				cost = int64(c)
				s.currency = cmp.Or(s.currency, u.GetCost().GetCurrencyCode())
			}
		}
		s.cost += cost
		if perStep && orchestratorv1.StepState(state) == orchestratorv1.StepState_STEP_STATE_SUCCEEDED && en >= st {
			s.steps[stepID] = [2]int64{(en - st) * int64(time.Microsecond), cost}
		}
	}
	return out, rs.Err()
}

// Forecast returns the forecast of a run of bp (a stored version) in total and per step, from up to window of
// the version's latest successful runs; a Forecast with no_history when there are none. The step forecasts have
// no budget: the caller, which can reach the agents, fills them in.
func (e *Engine) Forecast(ctx context.Context, tenant string, bp *orchestratorv1.Blueprint, window int) (*orchestratorv1.EstimateRunResponse, error) {
	hist, err := e.history(ctx, tenant, bp.GetName(), bp.GetVersion(), window, "", true)
	if err != nil {
		return nil, err
	}
	out := &orchestratorv1.EstimateRunResponse{BlueprintVersion: bp.GetVersion()}
	durs, costs := make([]int64, len(hist)), make([]int64, len(hist))
	for i, h := range hist {
		durs[i], costs[i] = h.duration, h.cost
	}
	cur := "USD"
	for _, h := range hist {
		if h.currency != "" {
			cur = h.currency
			break
		}
	}
	out.Total = forecastOf(durs, costs, cur)
	for _, d := range bp.GetSteps() {
		var sd, sc []int64
		for _, h := range hist {
			if v, ok := h.steps[d.GetId()]; ok {
				sd, sc = append(sd, v[0]), append(sc, v[1])
			}
		}
		out.Steps = append(out.Steps, &orchestratorv1.StepForecast{StepId: d.GetId(), Forecast: forecastOf(sd, sc, cur)})
	}
	return out, nil
}

func forecastOf(durs, costs []int64, currency string) *orchestratorv1.Forecast {
	if len(durs) == 0 {
		return &orchestratorv1.Forecast{NoHistory: true}
	}
	d, c := forecast.Summarize(durs), forecast.Summarize(costs)
	return &orchestratorv1.Forecast{SampleSize: int32(d.N),
		CostP50: pricing.Money(pricing.Nanos(c.P50), currency), CostP90: pricing.Money(pricing.Nanos(c.P90), currency),
		CostP99: pricing.Money(pricing.Nanos(c.P99), currency), DurationP50: durationpb.New(time.Duration(d.P50)),
		DurationP90: durationpb.New(time.Duration(d.P90)), DurationP99: durationpb.New(time.Duration(d.P99))}
}

// flagAnomaly marks r, just finished (succeeded or failed), when its cost or duration is above the p99 of its
// version's earlier successful runs (at least minAnomalySample of them), and counts it. It runs in the owner's
// goroutine after the run's last commit: one query, off every step's path; a failure is logged and leaves the
// run unflagged.
func (e *Engine) flagAnomaly(ctx context.Context, r *run) {
	if r.state == orchestratorv1.RunState_RUN_STATE_CANCELLED {
		return
	}
	hist, err := e.history(ctx, r.tenant, r.blueprint, r.version, anomalyWindow, r.id, false)
	if err != nil {
		e.logger.WarnContext(ctx, "engine: anomaly check", slog.String("run", r.id), slog.Any("error", err))
		return
	}
	if len(hist) < minAnomalySample {
		return
	}
	durs, costs := make([]int64, len(hist)), make([]int64, len(hist))
	for i, h := range hist {
		durs[i], costs[i] = h.duration, h.cost
	}
	dp99, _ := forecast.Quantile(durs, 0.99)
	cp99, _ := forecast.Quantile(costs, 0.99)
	u := r.usage()
	cost, _ := pricing.FromMoney(u.GetCost())
	dur := (r.ended - r.created) * int64(time.Microsecond)
	a := &orchestratorv1.Anomaly{Cost: int64(cost) > cp99, Duration: dur > dp99, SampleSize: int32(len(hist)),
		CostP99: pricing.Money(pricing.Nanos(cp99), cmp.Or(u.GetCost().GetCurrencyCode(), "USD")), DurationP99: durationpb.New(time.Duration(dp99))}
	if !a.GetCost() && !a.GetDuration() {
		return
	}
	b, err := marshal(a)
	if err == nil {
		_, err = e.writer().exec(ctx, `UPDATE loom.runs SET anomaly = ? WHERE id = ?`, b, r.id)
	}
	if err != nil {
		e.logger.WarnContext(ctx, "engine: flag anomaly", slog.String("run", r.id), slog.Any("error", err))
		return
	}
	r.anomaly = a
	if m := e.cfg.Metrics; m != nil {
		if a.GetCost() {
			m.anomalies.WithLabelValues("cost").Inc()
		}
		if a.GetDuration() {
			m.anomalies.WithLabelValues("duration").Inc()
		}
	}
}
