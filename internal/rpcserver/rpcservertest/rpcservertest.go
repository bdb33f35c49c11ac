// Package rpcservertest runs a real rpcserver.Server on a loopback port for tests, so they exercise the same
// transport, interceptors and limits as production.
package rpcservertest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
)

// Server is a running test server.
type Server struct {
	// Server is the server under test.
	*rpcserver.Server
	// Addr is its "127.0.0.1:port".
	Addr string
	// URL is "http://" + Addr, the base URL for Connect clients.
	URL  string
	stop func()
}

// Start serves services on a new loopback port with cfg (Addr is ignored) and stops the server when the test
// ends. auth nil means the local development principal.
func Start(t testing.TB, cfg rpcserver.Config, auth rpcserver.Authenticator, services ...rpcserver.Service) *Server {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := rpcserver.New(logger, cfg, auth, services...)
	if err != nil {
		t.Fatalf("rpcserver.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	s := &Server{Server: srv, Addr: ln.Addr().String(), URL: "http://" + ln.Addr().String()}
	var stopped bool
	s.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("server did not stop")
		}
	}
	t.Cleanup(s.stop)
	return s
}

// Stop shuts the server down gracefully and waits for it. It is also called when the test ends.
func (s *Server) Stop() { s.stop() }

// TenantHeader is the request header [TenantAuthenticator] reads.
const TenantHeader = "X-Test-Tenant"

// TenantAuthenticator stands in for authentication in service tests: the caller is the tenant named in the
// X-Test-Tenant header (subject "test", role admin); a call without the header is unauthenticated.
func TenantAuthenticator(r *http.Request) (principal.Principal, error) {
	tenant := r.Header.Get(TenantHeader)
	if tenant == "" {
		return principal.Principal{}, errors.New("no " + TenantHeader + " header")
	}
	return principal.Principal{Tenant: tenant, Subject: "test", Roles: []string{"admin"}}, nil
}

// HTTPClient returns a client that speaks HTTP/2 cleartext (h2c) and HTTP/1.1, as Connect clients need for
// streaming and gRPC.
func HTTPClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// GRPCConn returns a grpc-go connection to s, closed when the test ends.
func (s *Server) GRPCConn(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+s.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}
