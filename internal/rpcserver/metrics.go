package rpcserver

import (
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics holds the per-procedure RPC metrics served on /metrics.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_rpc_requests_total",
			Help: "RPCs handled, by procedure and status code (ok for success).",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_rpc_duration_seconds",
			Help:    "RPC latency, by procedure.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"procedure"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_rpc_in_flight",
			Help: "RPCs in progress, by procedure.",
		}, []string{"procedure"}),
	}
	reg.MustRegister(m.requests, m.duration, m.inFlight)
	return m
}

// start records the beginning of an RPC; the returned func records its end.
func (m *metrics) start(procedure string) func(err error) {
	begin := time.Now()
	g := m.inFlight.WithLabelValues(procedure)
	g.Inc()
	return func(err error) {
		g.Dec()
		code := "ok"
		if err != nil {
			code = connect.CodeOf(err).String()
		}
		m.requests.WithLabelValues(procedure, code).Inc()
		m.duration.WithLabelValues(procedure).Observe(time.Since(begin).Seconds())
	}
}
