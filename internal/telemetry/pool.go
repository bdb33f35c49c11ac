package telemetry

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolCollector exports the statistics of pgx connection pools (pgxpool.Stat) as Prometheus metrics
// loom_db_pool_*, labelled pool=<name> ("primary", "replica"), and loom_db_up: 1 if the pool answered a ping
// (bounded by 2 s) at scrape time. It reads both at scrape time.
func PoolCollector(pools map[string]*pgxpool.Pool) prometheus.Collector {
	return poolCollector(pools)
}

type poolCollector map[string]*pgxpool.Pool

var (
	poolLabels       = []string{"pool"}
	descPoolAcquired = prometheus.NewDesc("loom_db_pool_acquired_conns", "Connections of the database pool in use now.", poolLabels, nil)
	descPoolIdle     = prometheus.NewDesc("loom_db_pool_idle_conns", "Idle connections of the database pool.", poolLabels, nil)
	descPoolTotal    = prometheus.NewDesc("loom_db_pool_total_conns", "Connections of the database pool: acquired, idle and being opened.", poolLabels, nil)
	descPoolMax      = prometheus.NewDesc("loom_db_pool_max_conns", "The bound on the database pool's connections (--database-max-conns).", poolLabels, nil)
	descPoolAcquires = prometheus.NewDesc("loom_db_pool_acquires_total", "Successful connection acquisitions from the database pool.", poolLabels, nil)
	descPoolWait     = prometheus.NewDesc("loom_db_pool_acquire_wait_seconds_total", "Time spent waiting for a database connection, summed over acquisitions.", poolLabels, nil)
	descPoolEmpty    = prometheus.NewDesc("loom_db_pool_empty_acquires_total", "Acquisitions that had to wait because the database pool had no idle connection.", poolLabels, nil)
	descPoolCanceled = prometheus.NewDesc("loom_db_pool_canceled_acquires_total", "Acquisitions abandoned because their context ended while waiting for a database connection.", poolLabels, nil)
	descPoolNew      = prometheus.NewDesc("loom_db_pool_new_conns_total", "Database connections opened by the pool.", poolLabels, nil)
	descDBUp         = prometheus.NewDesc("loom_db_up", "1 if the database answered a ping at scrape time, 0 if not.", poolLabels, nil)
)

// pingTimeout bounds the ping behind loom_db_up, so a database that hangs cannot hang the scrape.
const pingTimeout = 2 * time.Second

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolAcquired, descPoolIdle, descPoolTotal, descPoolMax, descPoolAcquires, descPoolWait, descPoolEmpty, descPoolCanceled, descPoolNew, descDBUp} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for name, p := range c {
		if p == nil {
			continue
		}
		s := p.Stat()
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, name)
		}
		counter := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, name)
		}
		gauge(descPoolAcquired, float64(s.AcquiredConns()))
		gauge(descPoolIdle, float64(s.IdleConns()))
		gauge(descPoolTotal, float64(s.TotalConns()))
		gauge(descPoolMax, float64(s.MaxConns()))
		counter(descPoolAcquires, float64(s.AcquireCount()))
		counter(descPoolWait, s.AcquireDuration().Seconds())
		counter(descPoolEmpty, float64(s.EmptyAcquireCount()))
		counter(descPoolCanceled, float64(s.CanceledAcquireCount()))
		counter(descPoolNew, float64(s.NewConnsCount()))
		ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		up := 1.0
		if err := p.Ping(ctx); err != nil {
			up = 0
		}
		cancel()
		gauge(descDBUp, up)
	}
}
