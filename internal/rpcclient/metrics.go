package rpcclient

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Metrics exports the state of the circuit breakers of the connections dialed with it, as the gauge
// loom_rpcclient_breaker_state{target} (0 closed, 1 half-open, 2 open) read at scrape time. Register it with a
// Prometheus registry and pass it in [Config.Metrics]. A nil *Metrics records nothing. It is safe for concurrent
// use.
type Metrics struct {
	mu       sync.Mutex
	breakers map[string]*gobreaker.CircuitBreaker[any]
}

// NewMetrics returns an empty Metrics.
func NewMetrics() *Metrics { return &Metrics{breakers: map[string]*gobreaker.CircuitBreaker[any]{}} }

var _ prometheus.Collector = (*Metrics)(nil)

var descBreakerState = prometheus.NewDesc("loom_rpcclient_breaker_state",
	"State of the circuit breaker of a service-to-service target: 0 closed (calls flow), 1 half-open (one probe call), 2 open (calls fail fast with Unavailable).",
	[]string{"target"}, nil)

func (m *Metrics) add(target string, cb *gobreaker.CircuitBreaker[any]) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.breakers[target] = cb
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) { ch <- descBreakerState }

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for target, cb := range m.breakers {
		ch <- prometheus.MustNewConstMetric(descBreakerState, prometheus.GaugeValue, float64(breakerValue(cb.State())), target)
	}
}

// breakerValue is the gauge value of a state; spelled out rather than relying on gobreaker's numbering.
func breakerValue(s gobreaker.State) int {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	}
	return 0
}
