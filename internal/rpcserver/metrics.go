package rpcserver

import (
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/loom-dev/loom/internal/procedure"
)

// metrics holds the RPC metrics served on /metrics, in two conventions at once:
//
//   - grpc_server_*: the names, labels and code spelling of go-grpc-middleware's Prometheus provider
//     (grpc_service, grpc_method, grpc_type, grpc_code "OK", "InvalidArgument", ...), which existing gRPC
//     dashboards and alerts use;
//   - loom_rpc_*: Loom's own, kept for compatibility (procedure label, Connect code spelling "ok",
//     "invalid_argument", ...).
//
// Calls refused before the interceptors (load shedding, rate limit, authentication, credential throttling) are
// counted in both request counters with their code, and by reason in loom_rpc_refused_total, so an overload shows
// in the error ratio instead of vanishing from it.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
	refused  *prometheus.CounterVec

	started  *prometheus.CounterVec
	handled  *prometheus.CounterVec
	handling *prometheus.HistogramVec
	msgRecv  *prometheus.CounterVec
	msgSent  *prometheus.CounterVec

	procs sync.Map // procedure -> *procMetrics
}

// latencyBuckets serve both histograms: fine below 10 ms (a unary call here takes ~0.1 ms), wide enough for
// minute-long streams.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(reg prometheus.Registerer) *metrics {
	grpcLabels := []string{"grpc_type", "grpc_service", "grpc_method"}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_rpc_requests_total",
			Help: "RPCs handled, by procedure and status code (ok for success); refused calls included.",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "loom_rpc_duration_seconds",
			Help:    "RPC latency, by procedure.",
			Buckets: latencyBuckets,
		}, []string{"procedure"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "loom_rpc_in_flight",
			Help: "RPCs in progress, by procedure.",
		}, []string{"procedure"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "loom_rpc_refused_total",
			Help: "Calls refused before reaching a handler, by reason (load_shed, rate_limit, unauthenticated, throttled, auth_unavailable) and status code.",
		}, []string{"reason", "code"}),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "Total number of RPCs started on the server.",
		}, grpcLabels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(grpcLabels, "grpc_code")),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of RPCs that had been application-level handled by the server.",
			Buckets: latencyBuckets,
		}, grpcLabels),
		msgRecv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total",
			Help: "Total number of RPC stream messages received on the server.",
		}, grpcLabels),
		msgSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total",
			Help: "Total number of RPC stream messages sent by the server.",
		}, grpcLabels),
	}
	reg.MustRegister(m.requests, m.duration, m.inFlight, m.refused, m.started, m.handled, m.handling, m.msgRecv, m.msgSent)
	return m
}

// grpcType is the grpc_type label of a stream type.
func grpcType(t connect.StreamType) string {
	switch t {
	case connect.StreamTypeClient:
		return "client_stream"
	case connect.StreamTypeServer:
		return "server_stream"
	case connect.StreamTypeBidi:
		return "bidi_stream"
	}
	return "unary"
}

// grpcCode is the grpc_code label of an error: gRPC's spelling ("OK", "InvalidArgument"); Connect's codes have
// the same numbers.
func grpcCode(err error) string {
	if err == nil {
		return codes.OK.String()
	}
	return codes.Code(connect.CodeOf(err)).String()
}

// procMetrics are the series of one procedure whose labels do not depend on the outcome, resolved once: the
// label lookups are then off the per-call path. Procedures are those of the mounted services (the handler only
// runs interceptors for them), so the cache is bounded.
type procMetrics struct {
	procedure, typ, service, method string
	inFlight                        prometheus.Gauge
	duration, handling              prometheus.Observer
	started, recv, sent             prometheus.Counter
}

func (m *metrics) proc(spec connect.Spec) *procMetrics {
	if p, ok := m.procs.Load(spec.Procedure); ok {
		return p.(*procMetrics)
	}
	service, method, _ := procedure.Split(spec.Procedure)
	typ := grpcType(spec.StreamType)
	p := &procMetrics{
		procedure: spec.Procedure, typ: typ, service: service, method: method,
		inFlight: m.inFlight.WithLabelValues(spec.Procedure),
		duration: m.duration.WithLabelValues(spec.Procedure),
		handling: m.handling.WithLabelValues(typ, service, method),
		started:  m.started.WithLabelValues(typ, service, method),
		recv:     m.msgRecv.WithLabelValues(typ, service, method),
		sent:     m.msgSent.WithLabelValues(typ, service, method),
	}
	actual, _ := m.procs.LoadOrStore(spec.Procedure, p)
	return actual.(*procMetrics)
}

// call is the metrics of one RPC in progress.
type call struct {
	m          *metrics
	p          *procMetrics
	begin      time.Time
	recv, sent prometheus.Counter
}

// start records the beginning of an RPC; call end when it is over.
func (m *metrics) start(spec connect.Spec) *call {
	p := m.proc(spec)
	p.inFlight.Inc()
	p.started.Inc()
	return &call{m: m, p: p, begin: time.Now(), recv: p.recv, sent: p.sent}
}

// end records the outcome of the call.
func (c *call) end(err error) {
	p := c.p
	p.inFlight.Dec()
	elapsed := time.Since(c.begin).Seconds()
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
	}
	c.m.requests.WithLabelValues(p.procedure, code).Inc()
	p.duration.Observe(elapsed)
	c.m.handled.WithLabelValues(p.typ, p.service, p.method, grpcCode(err)).Inc()
	p.handling.Observe(elapsed)
}

// refusal counts a call refused before the handler. The procedure label is the request path only when the
// contracts know it ("unknown" otherwise), so hostile paths cannot grow the label set.
func (m *metrics) refusal(r *http.Request, reason string, err *connect.Error) {
	name := "unknown"
	service, method := "unknown", "unknown"
	typ := "unary"
	if md, ok := procedure.Method(r.URL.Path); ok {
		name = r.URL.Path
		service, method, _ = procedure.Split(name)
		switch {
		case md.IsStreamingClient() && md.IsStreamingServer():
			typ = "bidi_stream"
		case md.IsStreamingClient():
			typ = "client_stream"
		case md.IsStreamingServer():
			typ = "server_stream"
		}
	}
	m.refused.WithLabelValues(reason, err.Code().String()).Inc()
	m.requests.WithLabelValues(name, err.Code().String()).Inc()
	m.started.WithLabelValues(typ, service, method).Inc()
	m.handled.WithLabelValues(typ, service, method, grpcCode(err)).Inc()
}

// countingConn counts the messages of a streaming handler.
type countingConn struct {
	connect.StreamingHandlerConn
	recv, sent prometheus.Counter
}

func (c *countingConn) Receive(msg any) error {
	err := c.StreamingHandlerConn.Receive(msg)
	if err == nil {
		c.recv.Inc()
	}
	return err
}

func (c *countingConn) Send(msg any) error {
	err := c.StreamingHandlerConn.Send(msg)
	if err == nil {
		c.sent.Inc()
	}
	return err
}
