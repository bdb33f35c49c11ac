package agentrpc

import (
	"context"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/principal"
)

// defaultBudgetRefresh is how long a tenant's budget and period spend, read from the store, are trusted before
// they are read again (see Config.BudgetRefresh).
const defaultBudgetRefresh = 30 * time.Second

// spend is an amount of input and output tokens and cost.
type spend struct {
	in, out int64
	cost    pricing.Nanos
}

func (a spend) plus(b spend) spend {
	return spend{a.in + b.in, a.out + b.out, pricing.Add(a.cost, b.cost)}
}

// tokens is what token budgets count: input and output.
func (a spend) tokens() int64 { return a.in + a.out }

func (a spend) usage(currency string) *agentv1.Usage {
	return &agentv1.Usage{InputTokens: a.in, OutputTokens: a.out, Cost: pricing.Money(a.cost, currency)}
}

// limits is a TenantBudget in nano-units; zero fields do not limit.
type limits struct {
	runTokens, dayTokens, monthTokens int64
	runCost, dayCost, monthCost       pricing.Nanos
}

func (l limits) none() bool { return l == limits{} }

func limitsOf(b *agentv1.TenantBudget) (limits, error) {
	var l limits
	var err error
	l.runTokens, l.dayTokens, l.monthTokens = b.GetMaxTokensPerRun(), b.GetMaxTokensPerDay(), b.GetMaxTokensPerMonth()
	if l.runCost, err = pricing.FromMoney(b.GetMaxCostPerRun()); err != nil {
		return l, &agent.FieldError{Field: "budget.max_cost_per_run", Reason: err.Error()}
	}
	if l.dayCost, err = pricing.FromMoney(b.GetMaxCostPerDay()); err != nil {
		return l, &agent.FieldError{Field: "budget.max_cost_per_day", Reason: err.Error()}
	}
	if l.monthCost, err = pricing.FromMoney(b.GetMaxCostPerMonth()); err != nil {
		return l, &agent.FieldError{Field: "budget.max_cost_per_month", Reason: err.Error()}
	}
	if l.runCost < 0 || l.dayCost < 0 || l.monthCost < 0 {
		return l, &agent.FieldError{Field: "budget", Reason: "cost limits must not be negative"}
	}
	return l, nil
}

// budgets keeps every tenant's budget and its spend in the current UTC day and month in memory, so checking a
// model call against them costs no database round trip. The durable account is the runs table: a tenant's
// budget and its finished runs' spend are read from the store when first needed and again after Refresh (so
// spend by other replicas and budget changes made on them count within Refresh); the spend of runs executing in
// this process is added as it happens. It is safe for concurrent use.
type budgets struct {
	store    agent.Store
	refresh  time.Duration
	now      func() time.Time
	mu       sync.Mutex
	tenants  map[string]*tenantSpend
	currency string
}

// tenantSpend is one tenant's budget and spend. mu guards everything below it; loading happens under it, so one
// load per tenant runs at a time and the others wait for it.
type tenantSpend struct {
	mu     sync.Mutex
	loaded time.Time // zero: load before use
	// expires is when the loaded figures must be read again: Refresh after loading, or the next UTC midnight.
	expires time.Time
	day     time.Time // midnight UTC of the day counted
	month   time.Time // first of the month counted
	limits  limits
	budget  *agentv1.TenantBudget
	// stored is the finished runs' spend read from the store at load; finished is what runs of this process
	// finished since; inflight is the spend of runs executing here, by run id, and inflightSum its sum.
	storedDay, storedMonth     spend
	finishedDay, finishedMonth spend
	inflight                   map[string]spend
	inflightSum                spend
}

func newBudgets(store agent.Store, refresh time.Duration, currency string) *budgets {
	return &budgets{store: store, refresh: refresh, now: time.Now, tenants: map[string]*tenantSpend{}, currency: currency}
}

func (b *budgets) tenant(tenant string) *tenantSpend {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tenants[tenant]
	if t == nil {
		t = &tenantSpend{inflight: map[string]spend{}}
		b.tenants[tenant] = t
	}
	return t
}

// current returns t locked and up to date: loaded within refresh, in the current day and month.
func (b *budgets) current(ctx context.Context, tenant string) (*tenantSpend, error) {
	t := b.tenant(tenant)
	t.mu.Lock()
	now := b.now()
	if !t.loaded.IsZero() && now.Before(t.expires) {
		return t, nil
	}
	now = now.UTC()
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	bud, err := b.store.GetTenantBudget(ctx, tenant)
	if err != nil {
		t.mu.Unlock()
		return nil, err
	}
	l, err := limitsOf(bud)
	if err != nil {
		t.mu.Unlock()
		return nil, err
	}
	d, err := b.store.UsageTotal(ctx, tenant, day, time.Time{})
	if err != nil {
		t.mu.Unlock()
		return nil, err
	}
	m := d
	if month.Before(day) {
		if m, err = b.store.UsageTotal(ctx, tenant, month, day); err != nil {
			t.mu.Unlock()
			return nil, err
		}
		m = agent.UsageSum{InputTokens: m.InputTokens + d.InputTokens, OutputTokens: m.OutputTokens + d.OutputTokens, Cost: pricing.Add(m.Cost, d.Cost)}
	}
	t.budget, t.limits, t.loaded, t.day, t.month = bud, l, now, day, month
	t.expires = now.Add(b.refresh)
	if next := day.AddDate(0, 0, 1); next.Before(t.expires) {
		t.expires = next
	}
	t.storedDay = spend{d.InputTokens, d.OutputTokens, d.Cost}
	t.storedMonth = spend{m.InputTokens, m.OutputTokens, m.Cost}
	t.finishedDay, t.finishedMonth = spend{}, spend{}
	return t, nil
}

// totals is the tenant's spend in the day and the month, the runs executing here included.
func (t *tenantSpend) totals() (day, month spend) {
	in := t.inflightSum
	return t.storedDay.plus(t.finishedDay).plus(in), t.storedMonth.plus(t.finishedMonth).plus(in)
}

// check charges own (the spend of a run's own model call, zero before the first) to run runID and reports the
// first budget of the tenant that the day's, the month's or the run's spend (total: the run's rolled-up usage)
// has reached. At reports whether reaching the limit is enough (before a model call: nothing more may be
// spent), or only exceeding it (after a call).
func (b *budgets) check(ctx context.Context, tenant, runID string, own spend, total *agentv1.Usage, before bool) error {
	t, err := b.current(ctx, tenant)
	if err != nil {
		return err
	}
	defer t.mu.Unlock()
	if own != (spend{}) {
		t.inflight[runID] = t.inflight[runID].plus(own)
		t.inflightSum = t.inflightSum.plus(own)
	}
	if t.limits.none() {
		return nil
	}
	runCost, _ := pricing.FromMoney(total.GetCost())
	run := spend{total.GetInputTokens(), total.GetOutputTokens(), runCost}
	day, month := t.totals()
	over := func(used, limit int64) bool { return limit > 0 && (used > limit || (before && used >= limit)) }
	l := t.limits
	switch {
	case over(run.tokens(), l.runTokens):
		return exhausted("tenant.max_tokens_per_run", "%d tokens used by the run, budget %d", run.tokens(), l.runTokens)
	case over(int64(run.cost), int64(l.runCost)):
		return exhausted("tenant.max_cost_per_run", "%s %s spent by the run, budget %s", run.cost, b.currency, l.runCost)
	case over(day.tokens(), l.dayTokens):
		return exhausted("tenant.max_tokens_per_day", "%d tokens used today (UTC), budget %d", day.tokens(), l.dayTokens)
	case over(int64(day.cost), int64(l.dayCost)):
		return exhausted("tenant.max_cost_per_day", "%s %s spent today (UTC), budget %s", day.cost, b.currency, l.dayCost)
	case over(month.tokens(), l.monthTokens):
		return exhausted("tenant.max_tokens_per_month", "%d tokens used this month (UTC), budget %d", month.tokens(), l.monthTokens)
	case over(int64(month.cost), int64(l.monthCost)):
		return exhausted("tenant.max_cost_per_month", "%s %s spent this month (UTC), budget %s", month.cost, b.currency, l.monthCost)
	}
	return nil
}

// finish moves a finished run's spend from in flight to finished: it is in the store now, and is read from
// there at the next load.
func (b *budgets) finish(tenant, runID string) {
	t := b.tenant(tenant)
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.inflight[runID]
	if !ok {
		return
	}
	delete(t.inflight, runID)
	t.inflightSum = spend{t.inflightSum.in - s.in, t.inflightSum.out - s.out, t.inflightSum.cost - s.cost}
	t.finishedDay, t.finishedMonth = t.finishedDay.plus(s), t.finishedMonth.plus(s)
}

// invalidate makes the next check read tenant's budget and spend again.
func (b *budgets) invalidate(tenant string) {
	t := b.tenant(tenant)
	t.mu.Lock()
	t.loaded = time.Time{}
	t.mu.Unlock()
}

// agentLimit is the first of the agent's own per-run cost budget that total reached (before a model call) or
// exceeded (after one).
func agentCostBudget(a *agentv1.Agent, total *agentv1.Usage, before bool, currency string) error {
	limit, err := pricing.FromMoney(a.GetBudgets().GetMaxCost())
	if err != nil || limit <= 0 {
		return nil
	}
	used, _ := pricing.FromMoney(total.GetCost())
	if used > limit || (before && used >= limit) {
		return exhausted("agent.budgets.max_cost", "%s %s spent by the run of agent %s, budget %s", used, currency, a.GetName(), limit)
	}
	return nil
}

// SetTenantBudget implements agentv1connect.AgentServiceHandler.
func (s *Server) SetTenantBudget(ctx context.Context, req *connect.Request[agentv1.SetTenantBudgetRequest]) (*connect.Response[agentv1.SetTenantBudgetResponse], error) {
	tenant := principal.TenantOf(ctx)
	b := req.Msg.GetBudget()
	if b == nil {
		b = &agentv1.TenantBudget{}
	}
	if _, err := limitsOf(b); err != nil {
		return nil, s.connectError(ctx, err)
	}
	for field, m := range map[string]interface{ GetCurrencyCode() string }{"max_cost_per_run": b.GetMaxCostPerRun(),
		"max_cost_per_day": b.GetMaxCostPerDay(), "max_cost_per_month": b.GetMaxCostPerMonth()} {
		if c := m.GetCurrencyCode(); c != "" && c != s.prices.Currency() {
			return nil, s.connectError(ctx, &agent.FieldError{Field: "budget." + field + ".currency_code",
				Reason: fmt.Sprintf("%q: the price table is in %s", c, s.prices.Currency())})
		}
	}
	if err := s.store.SetTenantBudget(ctx, tenant, b); err != nil {
		return nil, s.connectError(ctx, err)
	}
	s.budgets.invalidate(tenant)
	return connect.NewResponse(&agentv1.SetTenantBudgetResponse{Budget: proto.CloneOf(b)}), nil
}

// GetTenantBudget implements agentv1connect.AgentServiceHandler.
func (s *Server) GetTenantBudget(ctx context.Context, req *connect.Request[agentv1.GetTenantBudgetRequest]) (*connect.Response[agentv1.GetTenantBudgetResponse], error) {
	tenant := principal.TenantOf(ctx)
	s.budgets.invalidate(tenant) // an answer straight from the store, not up to Refresh old
	t, err := s.budgets.current(ctx, tenant)
	if err != nil {
		return nil, s.connectError(ctx, err)
	}
	day, month := t.totals()
	b := proto.CloneOf(t.budget)
	t.mu.Unlock()
	cur := s.prices.Currency()
	return connect.NewResponse(&agentv1.GetTenantBudgetResponse{Budget: b,
		Day: day.usage(cur), Month: month.usage(cur)}), nil
}

// checkBudgets charges own (a model call's usage; nil when nothing new was spent) to the run's tenant and checks
// the run against its agent's cost budget and its tenant's budgets, in memory. before: a model call is about to
// be made, so a budget already reached stops the run.
func (s *Server) checkBudgets(ctx context.Context, env runEnv, run *agentv1.Run, own *agentv1.Usage, before bool) error {
	if err := agentCostBudget(env.agent, run.GetUsage(), before, s.prices.Currency()); err != nil {
		return err
	}
	var sp spend
	if own != nil {
		c, _ := pricing.FromMoney(own.GetCost())
		sp = spend{own.GetInputTokens(), own.GetOutputTokens(), c}
	}
	return s.budgets.check(ctx, env.tenant, run.GetId(), sp, run.GetUsage(), before)
}
