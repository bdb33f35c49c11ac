package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/telemetry"
	"github.com/loom-dev/loom/orchestrator/engine"
)

// observability is what serve builds for tracing and metrics before the services, carried to them in config.
type observability struct {
	tracer    trace.TracerProvider // nil: tracing off
	breakers  *rpcclient.Metrics
	workflows *engine.Metrics          // the run engine's, registered when the orchestrator runs here
	models    *telemetry.ModelMetrics  // model-call tokens, registered when the agent runs here
	memory    *telemetry.MemoryMetrics // search durations and the embedding cache, when memory runs here
}

// setupTracing starts tracing as the OTEL_* variables say (off unless configured) and returns cfg carrying it,
// and the function that flushes and stops it.
func setupTracing(ctx context.Context, cfg config, logger *slog.Logger) (config, func(), error) {
	tracing, err := telemetry.Setup(ctx, cfg.OTel.Get, "loom", buildVersion())
	if err != nil {
		return cfg, nil, fmt.Errorf("tracing: %w", err)
	}
	cfg.obs = observability{
		tracer: tracing.TracerProvider, breakers: rpcclient.NewMetrics(), workflows: engine.NewMetrics(),
		models: telemetry.NewModelMetrics(cfg.MetricsTenantLabels), memory: telemetry.NewMemoryMetrics(),
	}
	if tracing.Enabled() {
		logger.Info("tracing on", "exporter", tracing.Exporter, "sampler", tracing.Sampler)
	}
	return cfg, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tracing.Shutdown(ctx); err != nil {
			logger.Warn("tracing: flush spans at exit", "err", err)
		}
	}, nil
}

// registerMetrics adds the breaker states, the metrics of the services this process runs, and the pool
// statistics and read-replica routing of the shared Postgres database to the server's /metrics.
func registerMetrics(srv *rpcserver.Server, cfg config, dbs *databases) {
	srv.Registry().MustRegister(cfg.obs.breakers)
	if cfg.runs("orchestrator") && cfg.obs.workflows != nil {
		srv.Registry().MustRegister(cfg.obs.workflows)
	}
	if cfg.runs("agent") && cfg.obs.models != nil {
		srv.Registry().MustRegister(cfg.obs.models)
	}
	if cfg.runs("memory") && cfg.obs.memory != nil {
		srv.Registry().MustRegister(cfg.obs.memory)
	}
	if db, ok := dbs.byName[""]; ok && db.Pool != nil {
		pools := map[string]*pgxpool.Pool{"primary": db.Pool}
		srv.Registry().MustRegister(telemetry.PoolCollector(pools))
		if cfg.DatabaseReadURL != "" {
			srv.Registry().MustRegister(db.ReadMetrics())
		}
	}
}

// serveDebug serves pprof on addr (never the public port) until ctx is done. It returns once listening, or
// with the listen error.
func serveDebug(ctx context.Context, addr string, logger *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("debug listener: %w", err)
	}
	srv := &http.Server{
		Handler:           telemetry.DebugHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: /debug/pprof/profile and trace stream for as many seconds as asked.
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("debug listener", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	logger.Info("debug listener (pprof)", "addr", ln.Addr().String())
	return nil
}
