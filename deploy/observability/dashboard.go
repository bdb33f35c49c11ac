// Package observability builds and checks what deploy/observability holds for operators: the Grafana dashboard
// (dashboard.json, generated here with github.com/grafana/grafana-foundation-sdk/go) and the Prometheus alert
// rules (alerts.yml, unit-tested by alerts_test.yml with promtool). See runbook.md for what to do per alert.
package observability

import (
	"encoding/json"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// UID is the dashboard's Grafana uid.
const UID = "loom-overview"

var ds = common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}

func query(expr, legend string) *prometheus.DataqueryBuilder {
	return prometheus.NewDataqueryBuilder().Datasource(ds).Expr(expr).LegendFormat(legend)
}

func series(title, unit, description string, queries ...*prometheus.DataqueryBuilder) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().Title(title).Description(description).Unit(unit).Datasource(ds).Height(8).Span(12)
	for _, q := range queries {
		p = p.WithTarget(q)
	}
	return p
}

func single(title, unit, description string, q *prometheus.DataqueryBuilder) *stat.PanelBuilder {
	return stat.NewPanelBuilder().Title(title).Description(description).Unit(unit).Datasource(ds).Height(4).Span(6).WithTarget(q)
}

// serverFaults are the gRPC codes counted as the service's errors (as in alerts.yml).
const serverFaults = `grpc_code=~"Unknown|DeadlineExceeded|Internal|Unavailable|DataLoss"`

// Dashboard returns the Loom overview dashboard as Grafana JSON (indented, ending in a newline).
func Dashboard() ([]byte, error) {
	job := `job=~"$job"`
	b := dashboard.NewDashboardBuilder("Loom").
		Uid(UID).
		Description("Loom: RPC traffic, errors and latency (gRPC-convention metrics), refused calls, service-to-service breakers, database pools, workflows and the Go runtime. Alerts: deploy/observability/alerts.yml.").
		Tags([]string{"loom"}).
		Refresh("30s").
		Time("now-3h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus")).
		WithVariable(dashboard.NewQueryVariableBuilder("job").Label("Job").Datasource(ds).
			Query(dashboard.StringOrMap{String: cog.ToPtr("label_values(grpc_server_handled_total, job)")}).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).Multi(true).IncludeAll(true).AllValue(".*")).
		WithRow(dashboard.NewRowBuilder("Overview")).
		WithPanel(single("Requests", "reqps", "RPCs completed per second, refused ones included.",
			query(`sum(rate(grpc_server_handled_total{`+job+`}[$__rate_interval]))`, "calls/s"))).
		WithPanel(single("Server error ratio", "percentunit", "Share of RPCs ending in a server-side fault (LoomHighErrorRatio pages above 5%).",
			query(`sum(rate(grpc_server_handled_total{`+job+`,`+serverFaults+`}[$__rate_interval])) / sum(rate(grpc_server_handled_total{`+job+`}[$__rate_interval]))`, "errors"))).
		WithPanel(single("Unary p99", "s", "99th percentile latency of unary RPCs (the SLO: 99% within 500 ms).",
			query(`histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{`+job+`,grpc_type="unary"}[$__rate_interval])))`, "p99"))).
		WithPanel(single("Open breakers", "none", "Service-to-service targets whose circuit breaker is open.",
			query(`count(loom_rpcclient_breaker_state{`+job+`} == 2) or vector(0)`, "open"))).
		WithRow(dashboard.NewRowBuilder("RPC")).
		WithPanel(series("Requests by method", "reqps", "RPCs completed per second by service and method.",
			query(`sum by (grpc_service, grpc_method) (rate(grpc_server_handled_total{`+job+`}[$__rate_interval]))`, "{{grpc_service}}/{{grpc_method}}"))).
		WithPanel(series("Errors by code", "reqps", "RPCs per second that did not end OK, by gRPC code (callers' mistakes included).",
			query(`sum by (grpc_code) (rate(grpc_server_handled_total{`+job+`,grpc_code!="OK"}[$__rate_interval]))`, "{{grpc_code}}"))).
		WithPanel(series("Unary latency", "s", "p50, p90 and p99 latency of unary RPCs.",
			query(`histogram_quantile(0.5, sum by (le) (rate(grpc_server_handling_seconds_bucket{`+job+`,grpc_type="unary"}[$__rate_interval])))`, "p50"),
			query(`histogram_quantile(0.9, sum by (le) (rate(grpc_server_handling_seconds_bucket{`+job+`,grpc_type="unary"}[$__rate_interval])))`, "p90"),
			query(`histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{`+job+`,grpc_type="unary"}[$__rate_interval])))`, "p99"))).
		WithPanel(series("p99 by method", "s", "99th percentile latency of unary RPCs by method.",
			query(`histogram_quantile(0.99, sum by (le, grpc_service, grpc_method) (rate(grpc_server_handling_seconds_bucket{`+job+`,grpc_type="unary"}[$__rate_interval])))`, "{{grpc_service}}/{{grpc_method}}"))).
		WithPanel(series("Refused calls", "reqps", "Calls refused before any handler ran, by reason: load_shed (--max-in-flight), rate_limit, unauthenticated, throttled (credential guessing), auth_unavailable.",
			query(`sum by (reason, code) (rate(loom_rpc_refused_total{`+job+`}[$__rate_interval]))`, "{{reason}} ({{code}})"))).
		WithPanel(series("In flight", "none", "RPCs in progress (streams included), by procedure.",
			query(`sum by (procedure) (loom_rpc_in_flight{`+job+`})`, "{{procedure}}"))).
		WithRow(dashboard.NewRowBuilder("Dependencies")).
		WithPanel(series("Circuit breakers", "none", "Breaker state per service-to-service target: 0 closed, 1 half-open, 2 open.",
			query(`max by (instance, target) (loom_rpcclient_breaker_state{`+job+`})`, "{{instance}} -> {{target}}"))).
		WithPanel(series("Database reachable", "none", "1 while the pool answers a ping at scrape time.",
			query(`min by (instance, pool) (loom_db_up{`+job+`})`, "{{instance}} {{pool}}"))).
		WithPanel(series("Database connections", "none", "Connections of the Postgres pool: acquired, idle and the bound.",
			query(`sum by (pool) (loom_db_pool_acquired_conns{`+job+`})`, "{{pool}} acquired"),
			query(`sum by (pool) (loom_db_pool_idle_conns{`+job+`})`, "{{pool}} idle"),
			query(`sum by (pool) (loom_db_pool_max_conns{`+job+`})`, "{{pool}} max"))).
		WithPanel(series("Waiting for a connection", "s", "Seconds per second spent waiting for a database connection, and acquisitions that found no idle one.",
			query(`sum by (pool) (rate(loom_db_pool_acquire_wait_seconds_total{`+job+`}[$__rate_interval]))`, "{{pool}} wait"),
			query(`sum by (pool) (rate(loom_db_pool_empty_acquires_total{`+job+`}[$__rate_interval]))`, "{{pool}} empty acquires/s"))).
		WithPanel(series("Read replica lag", "s", "How far the read replica lags the primary (with --database-read-url).",
			query(`max by (instance) (loom_db_replica_lag_seconds{`+job+`})`, "{{instance}}"))).
		WithRow(dashboard.NewRowBuilder("Workflows")).
		WithPanel(series("Runs finished by state", "ops", "Workflow runs finishing per second, by final state.",
			query(`sum by (state) (rate(loom_workflow_runs_finished_total{`+job+`}[$__rate_interval]))`, "{{state}}"))).
		WithPanel(series("Queue lag", "s", "Age of the oldest step job ready to run (LoomQueueLag pages above 60 s).",
			query(`max by (instance) (loom_workflow_queue_lag_seconds{`+job+`})`, "{{instance}}"))).
		WithRow(dashboard.NewRowBuilder("Runtime")).
		WithPanel(series("Goroutines", "none", "Goroutines per process.",
			query(`go_goroutines{`+job+`}`, "{{instance}}"))).
		WithPanel(series("Memory", "bytes", "Resident memory per process.",
			query(`process_resident_memory_bytes{`+job+`}`, "{{instance}}")))
	d, err := b.Build()
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
