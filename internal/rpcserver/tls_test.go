package rpcserver_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/tlsfiles/tlsfilestest"
)

func TestTLS(t *testing.T) {
	t.Parallel()
	ca := tlsfilestest.NewCA(t, "loom-test-ca")
	certFile, keyFile := ca.Issue(t, t.TempDir(), "loom-test", 2)
	pool := ca.Pool()
	mem := &fakeMemory{id: "tls"}
	srv := rpcservertest.Start(t, rpcserver.Config{TLSCertFile: certFile, TLSKeyFile: keyFile}, nil, rpcserver.Service{
		Name: memoryv1connect.MemoryServiceName,
		Handler: func(o ...connect.HandlerOption) (string, http.Handler) {
			return memoryv1connect.NewMemoryServiceHandler(mem, o...)
		},
	})
	ctx := context.Background()
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}}
	for _, opt := range []connect.ClientOption{connect.WithGRPC(), connect.WithGRPCWeb(), connect.WithProtoJSON()} {
		c := memoryv1connect.NewMemoryServiceClient(hc, "https://"+srv.Addr, opt)
		if _, err := c.GetNamespace(ctx, connect.NewRequest(&memoryv1.GetNamespaceRequest{Name: "docs"})); err != nil {
			t.Errorf("connect client over TLS: %v", err)
		}
	}
	conn, err := grpc.NewClient("passthrough:///"+srv.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := memoryv1.NewMemoryServiceClient(conn).GetNamespace(ctx, &memoryv1.GetNamespaceRequest{Name: "docs"}); err != nil {
		t.Errorf("grpc-go over TLS: %v", err)
	}
	// Cleartext is refused on a TLS port.
	if _, err := http.Get("http://" + srv.Addr + "/healthz"); err == nil {
		res, _ := http.Get("http://" + srv.Addr + "/healthz")
		if res != nil && res.StatusCode == http.StatusOK {
			t.Error("cleartext request served on the TLS port")
		}
	}
}
