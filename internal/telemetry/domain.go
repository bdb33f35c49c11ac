package telemetry

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ModelMetrics count the tokens of model calls: loom_model_tokens_total{provider, model, direction} (direction
// "input" or "output"), with a tenant label too when made with tenant labels (installations with many tenants
// leave it off: every tenant is a series). A nil *ModelMetrics records nothing. Safe for concurrent use.
//
// The same switch labels loom_model_cost_total{provider, model, currency} (the cost of priced calls, in units of
// the currency: a float, for dashboards; the exact figures are the runs' and GetUsage's),
// loom_model_calls_unpriced_total{provider, model} (calls of models the price table does not price) and
// loom_budget_exhausted_total{budget} (runs stopped by a budget).
type ModelMetrics struct {
	tokens    *prometheus.CounterVec
	cost      *prometheus.CounterVec
	unpriced  *prometheus.CounterVec
	exhausted *prometheus.CounterVec
	tenants   bool
}

// NewModelMetrics returns the model-call metrics; tenantLabels adds the tenant to every series.
func NewModelMetrics(tenantLabels bool) *ModelMetrics {
	labels := []string{"provider", "model", "direction"}
	if tenantLabels {
		labels = append(labels, "tenant")
	}
	with := func(l ...string) []string {
		if tenantLabels {
			return append(l, "tenant")
		}
		return l
	}
	return &ModelMetrics{tenants: tenantLabels, tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "loom_model_tokens_total",
		Help: "Tokens of model calls, by provider, model and direction (input or output), and by tenant when tenant labels are on.",
	}, labels),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_model_cost_total",
			Help: "Cost of priced model calls in units of the currency, by provider, model and currency, and by tenant when tenant labels are on.",
		}, with("provider", "model", "currency")),
		unpriced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_model_calls_unpriced_total",
			Help: "Model calls of models the price table does not price (their cost is unknown), by provider and model.",
		}, with("provider", "model")),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_budget_exhausted_total",
			Help: "Agent runs stopped by a budget, by budget (for example tenant.max_cost_per_day).",
		}, with("budget")),
	}
}

func (m *ModelMetrics) labels(tenant string, lv ...string) []string {
	if m.tenants {
		return append(lv, tenant)
	}
	return lv
}

// AddCost counts one model call's cost, nanos nano-units (10^-9) of currency; unknown counts it as unpriced.
func (m *ModelMetrics) AddCost(tenant, provider, model, currency string, nanos int64, unknown bool) {
	if m == nil {
		return
	}
	if unknown {
		m.unpriced.WithLabelValues(m.labels(tenant, provider, model)...).Inc()
	}
	if nanos > 0 {
		m.cost.WithLabelValues(m.labels(tenant, provider, model, currency)...).Add(float64(nanos) / 1e9)
	}
}

// BudgetExhausted counts a run stopped by budget.
func (m *ModelMetrics) BudgetExhausted(tenant, budget string) {
	if m == nil {
		return
	}
	m.exhausted.WithLabelValues(m.labels(tenant, budget)...).Inc()
}

// AddTokens counts one model call's tokens.
func (m *ModelMetrics) AddTokens(tenant, provider, model string, input, output int64) {
	if m == nil {
		return
	}
	for _, d := range []struct {
		dir string
		n   int64
	}{{"input", input}, {"output", output}} {
		if d.n <= 0 {
			continue
		}
		lv := []string{provider, model, d.dir}
		if m.tenants {
			lv = append(lv, tenant)
		}
		m.tokens.WithLabelValues(lv...).Add(float64(d.n))
	}
}

// Describe implements prometheus.Collector.
func (m *ModelMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.tokens.Describe(ch)
	m.cost.Describe(ch)
	m.unpriced.Describe(ch)
	m.exhausted.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *ModelMetrics) Collect(ch chan<- prometheus.Metric) {
	m.tokens.Collect(ch)
	m.cost.Collect(ch)
	m.unpriced.Collect(ch)
	m.exhausted.Collect(ch)
}

// MemoryMetrics are the memory service's: loom_memory_search_duration_seconds{mode} (exact, int8, ivf, hnsw,
// hybrid) and the embedding cache's loom_memory_embed_cache_hits_total and _misses_total. A nil *MemoryMetrics
// records nothing. Safe for concurrent use.
type MemoryMetrics struct {
	search *prometheus.HistogramVec

	mu    sync.Mutex
	cache func() (hits, misses uint64)
}

var (
	descCacheHits   = prometheus.NewDesc("loom_memory_embed_cache_hits_total", "Texts whose embedding came from the embedding cache.", nil, nil)
	descCacheMisses = prometheus.NewDesc("loom_memory_embed_cache_misses_total", "Texts the embedder had to embed (not in the embedding cache).", nil, nil)
)

// NewMemoryMetrics returns the memory service's metrics.
func NewMemoryMetrics() *MemoryMetrics {
	return &MemoryMetrics{search: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "loom_memory_search_duration_seconds",
		Help:    "Time a memory store took to answer one search, by mode (exact, int8, ivf, hnsw, hybrid).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
	}, []string{"mode"})}
}

// ObserveSearch records one search of the given mode.
func (m *MemoryMetrics) ObserveSearch(mode string, d time.Duration) {
	if m == nil {
		return
	}
	m.search.WithLabelValues(mode).Observe(d.Seconds())
}

// SetCacheStats names the function the cache counters are read from at scrape time.
func (m *MemoryMetrics) SetCacheStats(stats func() (hits, misses uint64)) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.cache = stats
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *MemoryMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.search.Describe(ch)
	ch <- descCacheHits
	ch <- descCacheMisses
}

// Collect implements prometheus.Collector.
func (m *MemoryMetrics) Collect(ch chan<- prometheus.Metric) {
	m.search.Collect(ch)
	m.mu.Lock()
	stats := m.cache
	m.mu.Unlock()
	if stats == nil {
		return
	}
	hits, misses := stats()
	ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(hits))
	ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(misses))
}
