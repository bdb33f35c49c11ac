package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"google.golang.org/grpc"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/gen/loom/agent/v1/agentv1connect"
	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/gen/loom/orchestrator/v1/orchestratorv1connect"
	"github.com/loom-dev/loom/internal/rpcclient"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/web"

	"connectrpc.com/connect"
	"net/http"
)

// serve runs the configured services until ctx is done.
func serve(ctx context.Context, cfg config, logOut io.Writer) error {
	logger := newLogger(cfg, logOut)
	logger.Info("loom starting", "version", buildVersion(), "config", cfg)
	if cfg.DatabaseURL == "" {
		logger.Warn("local development mode: every call runs as tenant \"local\" without authentication; data in " + cfg.DataDir)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()

	clients, err := dialClients(cfg, ln.Addr(), logger)
	if err != nil {
		return err
	}
	defer clients.Close()

	var services []rpcserver.Service
	closers := []func(){}
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	for _, name := range allServices {
		if !cfg.runs(name) {
			continue
		}
		svc, closeFn, err := buildService(ctx, name, cfg, logger, clients)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		services = append(services, svc)
		if closeFn != nil {
			closers = append(closers, closeFn)
		}
	}

	srv, err := rpcserver.New(logger, rpcserver.Config{
		Addr:                 cfg.Listen,
		TLSCertFile:          cfg.TLSCert,
		TLSKeyFile:           cfg.TLSKey,
		MaxMessageBytes:      cfg.MaxMessageBytes,
		DefaultTimeout:       cfg.DefaultTimeout,
		MaxTimeout:           cfg.MaxTimeout,
		MaxConcurrentStreams: cfg.MaxStreams,
		MaxInFlight:          cfg.MaxInFlight,
		RateLimit:            cfg.RateLimit,
		RateBurst:            cfg.RateBurst,
		ShutdownGrace:        cfg.ShutdownGrace,
		CORSOrigins:          cfg.CORSOrigins,
		Reflection:           cfg.Reflection,
		Console:              web.Handler(),
	}, nil, services...)
	if err != nil {
		return err
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
func dialClients(cfg config, self net.Addr, logger *slog.Logger) (*clients, error) {
	selfTarget := selfAddr(self)
	var tlsConf *tls.Config
	if cfg.TLSCert != "" {
		pem, err := os.ReadFile(cfg.TLSCert)
		if err != nil {
			return nil, fmt.Errorf("read tls cert: %w", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tlsConf = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c := &clients{}
	dial := func(target, service string) (*grpc.ClientConn, error) {
		if target == "" {
			target = selfTarget
		}
		conn, err := rpcclient.Dial(rpcclient.Config{Target: target, Service: service, TLS: tlsConf, Logger: logger})
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

// buildService constructs one service with its stores. The returned func releases them.
func buildService(ctx context.Context, name string, cfg config, logger *slog.Logger, c *clients) (rpcserver.Service, func(), error) {
	_ = ctx
	logger = logger.With("service", name)
	switch name {
	case "memory":
		return unimplemented(memoryv1connect.MemoryServiceName, func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(memoryv1connect.UnimplementedMemoryServiceHandler{}, o...)
		}), nil, nil
	case "agent":
		return unimplemented(agentv1connect.AgentServiceName, func(o ...connect.HandlerOption) (string, http.Handler) {
			return agentv1connect.NewAgentServiceHandler(agentv1connect.UnimplementedAgentServiceHandler{}, o...)
		}), nil, nil
	case "orchestrator":
		return unimplemented(orchestratorv1connect.OrchestratorServiceName, func(o ...connect.HandlerOption) (string, http.Handler) {
			return orchestratorv1connect.NewOrchestratorServiceHandler(orchestratorv1connect.UnimplementedOrchestratorServiceHandler{}, o...)
		}), nil, nil
	}
	return rpcserver.Service{}, nil, fmt.Errorf("unknown service %q", name)
}

func unimplemented(name string, h func(...connect.HandlerOption) (string, http.Handler)) rpcserver.Service {
	return rpcserver.Service{Name: name, Handler: h}
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
