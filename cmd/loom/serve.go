package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/loom-dev/loom/admin"
	"github.com/loom-dev/loom/agent/agentrpc"
	agentsql "github.com/loom-dev/loom/agent/sqlstore"
	"github.com/loom-dev/loom/gateway"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/mcpserver"
	"github.com/loom-dev/loom/internal/pricing"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/telemetry"
	"github.com/loom-dev/loom/internal/tlsfiles"
	"github.com/loom-dev/loom/memory"
	"github.com/loom-dev/loom/memory/embed"
	"github.com/loom-dev/loom/memory/embed/gemini"
	"github.com/loom-dev/loom/memory/embed/openai"
	"github.com/loom-dev/loom/memory/localstore"
	"github.com/loom-dev/loom/memory/memoryrpc"
	"github.com/loom-dev/loom/memory/pgstore"
	"github.com/loom-dev/loom/orchestrator/engine"
	"github.com/loom-dev/loom/orchestrator/orchestratorrpc"
	orchsql "github.com/loom-dev/loom/orchestrator/sqlstore"
	"github.com/loom-dev/loom/web"

	"net/http"
)

// serve runs the configured services until ctx is done.
func serve(ctx context.Context, cfg config, logOut io.Writer) error {
	logger := newLogger(cfg, logOut)
	logger.Info("loom starting", "version", buildVersion(), "config", cfg)
	if cfg.Auth == "local" {
		logger.Warn("local development mode (--auth local): calls without credentials act as tenant \"local\" with the admin role; deployments use --auth required")
		if !isLoopback(cfg.Listen) {
			logger.Warn("--auth local on a non-loopback address: anyone who can reach it acts as admin of tenant \"local\"", "listen", cfg.Listen)
		}
	}

	cfg, stopTracing, err := setupTracing(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer stopTracing() // last: after the server and the services, whose spans it flushes

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()

	dbs := &databases{cfg: cfg}
	defer dbs.Close() // after the services and the server, which use it: defers run last-in first-out

	sec, err := buildSecurity(ctx, cfg, logger, dbs)
	if err != nil {
		return err
	}

	var tokens rpcclient.TokenMinter = sec.minter
	if cfg.Auth == "local" {
		tokens = localTokens{sec.minter}
	}
	clients, err := dialClients(cfg, ln.Addr(), tokens, logger)
	if err != nil {
		return err
	}
	defer clients.Close()

	var services []rpcserver.Service
	var fallback http.Handler
	closers := []func(){}
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	if cfg.runs("gateway") {
		proxy, err := buildGateway(ctx, cfg, logger, sec)
		if err != nil {
			return err
		}
		fallback = proxy
		closers = append(closers, func() { proxy.Close() })
	}
	for _, name := range allServices {
		if !cfg.runs(name) {
			continue
		}
		svc, closeFn, err := buildService(ctx, name, cfg, logger, clients, sec, dbs)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		services = append(services, svc)
		if closeFn != nil {
			closers = append(closers, closeFn)
		}
	}

	var mcp *mcpserver.Handler
	var mcpHandler http.Handler // stays a nil interface without MCP
	if cfg.MCP {
		mcp = mcpserver.New(mcpserver.Config{Version: buildVersion(), Logger: logger, MaxBodyBytes: int64(cfg.MaxMessageBytes)})
		mcpHandler = mcp
	}
	srv, err := rpcserver.New(logger, rpcserver.Config{
		Addr:                 cfg.Listen,
		TLSCertFile:          cfg.TLSCert,
		TLSKeyFile:           cfg.TLSKey,
		TLSClientCAFile:      cfg.TLSClientCA,
		MaxMessageBytes:      cfg.MaxMessageBytes,
		DefaultTimeout:       cfg.DefaultTimeout,
		MaxTimeout:           cfg.MaxTimeout,
		MaxConcurrentStreams: cfg.MaxStreams,
		MaxInFlight:          cfg.MaxInFlight,
		RateLimit:            cfg.RateLimit,
		RateBurst:            cfg.RateBurst,
		Fairness:             cfg.Fairness,
		ShutdownGrace:        cfg.ShutdownGrace,
		CORSOrigins:          cfg.CORSOrigins,
		AuthMode:             cfg.Auth,
		Reflect:              gatewayServices(cfg),
		Reflection:           cfg.Reflection,
		Console:              web.Handler(),
		MCP:                  mcpHandler,
		Audit:                sec.trail,
		Fallback:             fallback,
		TracerProvider:       cfg.obs.tracer,
		LogSampleRate:        cfg.LogRPCSample,
		SlowCall:             cfg.LogSlow,
	}, sec.authenticate, services...)
	if err != nil {
		return err
	}
	if mcp != nil {
		mcp.SetDispatch(srv.Dispatcher()) // each tool call is an RPC through the server's chain, as the caller, counted once
	}
	srv.Registry().MustRegister(sec.throttle.Collectors()...)
	registerMetrics(srv, cfg, dbs)
	if cfg.DebugListen != "" {
		if err := serveDebug(ctx, cfg.DebugListen, logger); err != nil {
			return err
		}
	}
	return srv.Serve(ctx, ln)
}

// clients are the service-to-service connections, one per target, shared by every service in the process.
type clients struct {
	memory memoryv1.MemoryServiceClient
	agent  agentv1.AgentServiceClient
	conns  []*grpc.ClientConn
}

func (c *clients) Close() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// dialClients connects to the memory and agent services: at their configured targets, or at this process's own
// listener in all-in-one mode, so calls take the same path either way.
// localTokens, in --auth local mode, sends the calls made for the local tenant without a service token: the
// service called, also in local mode, grants them the local principal anyway, while a token minted with this
// process's own key (when no LOOM_SERVICE_TOKEN_KEY is shared) would not verify in another process. Workflow
// steps act for their run's tenant ("workflow:<run>" subjects), which is "local" for every run in this mode.
type localTokens struct{ m *authn.Minter }

func (l localTokens) Mint(p principal.Principal, audience string) (string, error) {
	if p.Tenant == principal.Local.Tenant {
		return "", nil
	}
	return l.m.Mint(p, audience)
}

// clientTLS is how this process calls other Loom services: nil (h2c) unless TLS is configured. With
// --tls-client-cert it presents that certificate (mutual TLS) and trusts --tls-ca, or the system roots; with only
// --tls-cert (all-in-one over TLS) it trusts its own certificate. Every file is read again when it changes.
func clientTLS(cfg config) (*tls.Config, error) {
	var roots []string
	switch {
	case cfg.TLSCA != "":
		roots = []string{cfg.TLSCA}
	case cfg.TLSClientCert == "" && cfg.TLSCert != "":
		roots = []string{cfg.TLSCert}
	case cfg.TLSClientCert == "":
		return nil, nil
	}
	return tlsfiles.Client(roots, cfg.TLSClientCert, cfg.TLSClientKey)
}

func dialClients(cfg config, self net.Addr, minter rpcclient.TokenMinter, logger *slog.Logger) (*clients, error) {
	selfTarget := selfAddr(self)
	tlsConf, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	c := &clients{}
	dial := func(target, service string) (*grpc.ClientConn, error) {
		if target == "" {
			target = selfTarget
		}
		conn, err := rpcclient.Dial(rpcclient.Config{Target: target, Service: service, TLS: tlsConf, Tokens: minter, Logger: logger,
			TracerProvider: cfg.obs.tracer, Metrics: cfg.obs.breakers})
		if err != nil {
			return nil, err
		}
		c.conns = append(c.conns, conn)
		return conn, nil
	}
	memConn, err := dial(cfg.MemoryAddr, memoryv1.MemoryService_ServiceDesc.ServiceName)
	if err != nil {
		return nil, err
	}
	agentConn, err := dial(cfg.AgentAddr, agentv1.AgentService_ServiceDesc.ServiceName)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.memory = memoryv1.NewMemoryServiceClient(memConn)
	c.agent = agentv1.NewAgentServiceClient(agentConn)
	return c, nil
}

// selfAddr is a dialable address for our own listener.
func selfAddr(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.String()
	}
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
	}
	return tcp.String()
}

// buildService constructs one service with its stores. The returned func releases them, after the server stops.
func buildService(ctx context.Context, name string, cfg config, logger *slog.Logger, c *clients, sec *security, dbs *databases) (rpcserver.Service, func(), error) {
	logger = logger.With("service", name)
	switch name {
	case "admin":
		svc := admin.New(logger, sec.keys, sec.trail, sec.providerKeys, authn.Mode(cfg.Auth)).Service() // cfg.Validate allows only "local" and "required"
		db, err := dbs.open(ctx, "auth.db")
		if err != nil {
			return rpcserver.Service{}, nil, err
		}
		svc.Ready = db.PingContext // /readyz is false while the database does not answer
		return svc, nil, nil
	case "memory":
		return buildMemory(ctx, cfg, logger, dbs)
	case "agent":
		return buildAgent(ctx, cfg, logger, c, sec, dbs)
	case "orchestrator":
		return buildOrchestrator(ctx, cfg, logger, c, dbs)
	}
	return rpcserver.Service{}, nil, fmt.Errorf("unknown service %q", name)
}

// gatewayServices are the services a gateway forwards to, which its reflection describes; nil for the services.
func gatewayServices(cfg config) []string {
	if !cfg.runs("gateway") {
		return nil
	}
	var out []string
	for name, target := range cfg.GatewayTargets {
		if target != "" {
			out = append(out, serviceNames[name])
		}
	}
	slices.Sort(out)
	return out
}

// buildGateway builds the proxy that forwards authenticated calls to each service's backends with a service
// token minted for the caller.
func buildGateway(ctx context.Context, cfg config, logger *slog.Logger, sec *security) (*gateway.Proxy, error) {
	backends := map[string]string{}
	for name, target := range cfg.GatewayTargets {
		if target != "" {
			backends[serviceNames[name]] = target
		}
	}
	if len(backends) == 0 {
		return nil, errors.New("gateway: no backends: set --gateway-memory, --gateway-agent, --gateway-orchestrator or --gateway-admin")
	}
	if cfg.Auth == "local" {
		// Anonymous callers would reach the backends as the development admin; a backend with --auth required
		// refuses such tokens anyway, but the configuration is a mistake worth stopping at once.
		checkCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		unreachable, err := gateway.CheckBackendsAllowLocal(checkCtx, backends)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: a gateway with --auth local must not front --auth required backends (run the gateway with --auth required)", err)
		}
		if len(unreachable) > 0 {
			logger.Warn("gateway --auth local: could not ask these backends their auth mode; backends with --auth required refuse its calls", "backends", unreachable)
		}
	}
	tlsConf, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	return gateway.New(logger.With("service", "gateway"), gateway.Config{Backends: backends, MaxRequestBytes: int64(cfg.MaxMessageBytes) + 1024, TLS: tlsConf,
		TracerProvider: cfg.obs.tracer, LogSampleRate: cfg.LogRPCSample, SlowCall: cfg.LogSlow}, sec.minter)
}

// buildMemory uses pgvector when a database URL is configured and the embedded store in the data dir otherwise.
func buildMemory(ctx context.Context, cfg config, logger *slog.Logger, dbs *databases) (rpcserver.Service, func(), error) {
	var store memory.Store
	var closeFn func()
	if cfg.DatabaseURL != "" {
		db, err := dbs.open(ctx, "")
		if err != nil {
			return rpcserver.Service{}, nil, err
		}
		s, err := pgstore.New(ctx, db, pgstore.WithQuota(cfg.MemoryQuota), pgstore.WithObserver(memoryrpc.SearchTelemetry(cfg.obs.memory)))
		if err != nil {
			return rpcserver.Service{}, nil, err
		}
		store, closeFn = s, func() { s.Close() }
	} else {
		s, err := localstore.Open(filepath.Join(cfg.DataDir, "memory"), localstore.WithQuota(cfg.MemoryQuota), localstore.WithObserver(memoryrpc.SearchTelemetry(cfg.obs.memory)))
		if err != nil {
			return rpcserver.Service{}, nil, err
		}
		store, closeFn = s, func() { s.Close() }
	}
	embedders := embed.NewRegistry(10000)
	cfg.obs.memory.SetCacheStats(embedders.CacheStats)
	configureEmbedders(embedders, cfg)
	return memoryrpc.New(logger, store, embedders).Service(), closeFn, nil
}

// buildAgent opens the agent store (SQLite in the data dir, or Postgres) and gives the agent its memory client.
func buildAgent(ctx context.Context, cfg config, logger *slog.Logger, c *clients, sec *security, dbs *databases) (rpcserver.Service, func(), error) {
	db, err := dbs.open(ctx, "agent.db")
	if err != nil {
		return rpcserver.Service{}, nil, err
	}
	store, err := agentsql.New(ctx, db)
	if err != nil {
		return rpcserver.Service{}, nil, err
	}
	prices, err := priceTable(cfg)
	if err != nil {
		return rpcserver.Service{}, nil, err
	}
	acfg := agentrpc.Config{
		Prices:           prices,
		Metrics:          cfg.obs.models,
		Models:           modelProviders(cfg),
		ElevenLabsAPIKey: cfg.Secrets.ElevenLabsAPIKey,
		TavusAPIKey:      cfg.Secrets.TavusAPIKey,
	}
	if sec.providerKeys != nil { // a nil *ProviderKeys in the interface would count as set
		acfg.TenantKeys = sec.providerKeys
	}
	for name, path := range cfg.MCPStdioAllow {
		if acfg.MCPStdio == nil {
			acfg.MCPStdio = map[string]agentrpc.MCPCommand{}
		}
		acfg.MCPStdio[name] = agentrpc.MCPCommand{Path: path}
	}
	if sec.trail != nil { // the same: a nil *auditsql.Store would count as set
		acfg.Audit = sec.trail
	}
	srv, err := agentrpc.New(logger, store, c.memory, acfg)
	if err != nil {
		return rpcserver.Service{}, nil, err
	}
	svc := srv.Service()
	svc.Ready = db.PingContext
	// Maintain renews this process's run leases and fails runs cut off by a crash, until the server has drained.
	mctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	maintained := make(chan struct{})
	go func() { defer close(maintained); _ = srv.Maintain(mctx) }()
	return svc, func() { stop(); <-maintained }, nil
}

// buildOrchestrator opens the blueprint store and the run engine (leased runs) on SQLite or Postgres.
func buildOrchestrator(ctx context.Context, cfg config, logger *slog.Logger, c *clients, dbs *databases) (rpcserver.Service, func(), error) {
	db, err := dbs.open(ctx, "orchestrator.db")
	if err != nil {
		return rpcserver.Service{}, nil, err
	}
	store, err := orchsql.New(ctx, db)
	if err != nil {
		return rpcserver.Service{}, nil, err
	}
	ecfg := engine.Config{LeaseDuration: cfg.RunLease, EventRetention: cfg.RunEventRetention, TracerProvider: cfg.obs.tracer, Metrics: cfg.obs.workflows}
	eng, err := engine.New(ctx, logger, db, c.agent, c.memory, ecfg)
	if err == nil {
		err = eng.Start(context.WithoutCancel(ctx))
	}
	if err != nil {
		return rpcserver.Service{}, nil, fmt.Errorf("run engine: %w", err)
	}
	closeFn := func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := eng.Stop(stopCtx); err != nil {
			logger.Warn("stop run engine", "err", err)
		}
	}
	svc := orchestratorrpc.New(logger, store, eng, orchestratorrpc.WithAgents(c.agent)).Service()
	svc.Ready = db.PingContext
	return svc, closeFn, nil
}

// databases are the process's open databases: on Postgres one handle (one pgx pool) shared by every component,
// each in its own schema; on SQLite one file per component in the data dir. Close closes them all, after every
// component using them has stopped.
type databases struct {
	cfg    config
	byName map[string]*sqldb.DB // by SQLite file name, or "" for Postgres
}

// open returns the Postgres database when one is configured, or else the component's own SQLite file in the
// data dir, opening it on first use.
func (d *databases) open(ctx context.Context, sqliteFile string) (*sqldb.DB, error) {
	key := sqliteFile
	if d.cfg.DatabaseURL != "" {
		key = ""
	}
	if db, ok := d.byName[key]; ok {
		return db, nil
	}
	db, err := openDB(ctx, d.cfg, sqliteFile)
	if err != nil {
		return nil, err
	}
	if d.byName == nil {
		d.byName = map[string]*sqldb.DB{}
	}
	d.byName[key] = db
	return db, nil
}

func (d *databases) Close() {
	for _, db := range d.byName {
		db.Close()
	}
}

// openDB opens the Postgres database when configured, or the component's own SQLite file in the data dir. The
// caller closes it.
func openDB(ctx context.Context, cfg config, sqliteFile string) (*sqldb.DB, error) {
	if cfg.DatabaseURL != "" {
		return sqldb.Open(ctx, cfg.DatabaseURL, sqldb.Options{
			MaxConns: cfg.DatabaseMaxConn, ReadURL: cfg.DatabaseReadURL, ReadMaxLag: cfg.ReadMaxLag,
			TracerProvider: cfg.obs.tracer,
		})
	}
	return sqldb.Open(ctx, "sqlite:"+filepath.Join(cfg.DataDir, sqliteFile))
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(telemetry.LogHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(telemetry.LogHandler(slog.NewTextHandler(w, opts)))
}

// configureEmbedders registers the provider embedders: Gemini when its key is set; OpenAI-compatible when its key
// or a base URL is set (local servers such as Ollama need no key). "local" is always there.
func configureEmbedders(r *embed.Registry, cfg config) {
	if cfg.Secrets.GeminiAPIKey.IsSet() {
		r.Register("gemini", gemini.Factory(gemini.Config{APIKey: cfg.Secrets.GeminiAPIKey.Reveal(), BaseURL: cfg.GeminiBaseURL}))
	}
	if cfg.Secrets.OpenAIAPIKey.IsSet() || cfg.OpenAIBaseURL != "" {
		r.Register("openai", openai.Factory(openai.Config{APIKey: cfg.Secrets.OpenAIAPIKey.Reveal(), BaseURL: cfg.OpenAIBaseURL}))
	}
}

// priceTable is the price table of --price-table with --prices applied; the default table without either.
func priceTable(cfg config) (*pricing.Table, error) {
	t := pricing.Default()
	if cfg.PriceTable != "" {
		var err error
		if t, err = pricing.Load(cfg.PriceTable); err != nil {
			return nil, fmt.Errorf("--price-table: %w", err)
		}
	}
	return t.WithFlag(cfg.Prices)
}
