package main

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/internal/tlsfiles/tlsfilestest"
)

// TestMutualTLSBetweenServices runs backends that accept service-to-service calls only from certificates their
// CA signed, behind gateways with and without such a certificate, and renews the backend's certificate on disk.
func TestMutualTLSBetweenServices(t *testing.T) {
	dataDir, pki := t.TempDir(), t.TempDir()
	setServiceTokenKey(t)
	ca, rogue := tlsfilestest.NewCA(t, "loom-test-ca"), tlsfilestest.NewCA(t, "rogue-ca")
	caFile := filepath.Join(pki, "ca.pem")
	mustT(t, os.WriteFile(caFile, ca.PEM, 0o600))
	srvCert, srvKey := ca.Issue(t, pki, "backend", 10)
	gwCert, gwKey := ca.Issue(t, pki, "gateway", 20)
	rogueCert, rogueKey := rogue.Issue(t, pki, "rogue", 30)
	admin := createKey(t, dataDir, "tenant-a", "admin")

	backend := startLoomIn(t, dataDir, "--auth", "required",
		"--tls-cert", srvCert, "--tls-key", srvKey, "--tls-client-ca", caFile,
		"--tls-ca", caFile, "--tls-client-cert", srvCert, "--tls-client-key", srvKey)
	gateway := func(extra ...string) *process {
		args := []string{"--auth", "required", "--services", "gateway", "--tls-ca", caFile,
			"--gateway-memory", backend.addr, "--gateway-agent", backend.addr}
		return startLoomIn(t, dataDir, append(args, extra...)...)
	}
	good := gateway("--tls-client-cert", gwCert, "--tls-client-key", gwKey)
	noCert := gateway()
	badCert := gateway("--tls-client-cert", rogueCert, "--tls-client-key", rogueKey)

	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+admin)
	call := func(addr string, creds credentials.TransportCredentials, name string) error {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
		mustT(t, err)
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err = memoryv1.NewMemoryServiceClient(conn).CreateNamespace(cctx, &memoryv1.CreateNamespaceRequest{
			Namespace: &memoryv1.Namespace{Name: name, Dimension: 8},
		})
		return err
	}
	plain := insecure.NewCredentials()
	if err := call(good.addr, plain, "through-mtls"); err != nil {
		t.Fatalf("through the gateway with a certificate the CA signed: %v", err)
	}
	// The gateway without a certificate still holds the signing key: its tokens are refused anyway.
	err := call(noCert.addr, plain, "no-cert")
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(backend.logs.String(), "without a verified client certificate") {
		t.Fatalf("through the gateway without a client certificate: %v, want Unauthenticated for want of a certificate", err)
	}
	// A certificate of another CA fails the handshake: the backend is unreachable for that gateway.
	if err := call(badCert.addr, plain, "rogue-cert"); status.Code(err) != codes.Unavailable {
		t.Fatalf("through the gateway with a rogue CA's certificate: %v, want Unavailable", err)
	}
	// Callers with API keys need no certificate: the client CA only adds a way to be trusted.
	roots := ca.Pool()
	direct := credentials.NewTLS(&tls.Config{RootCAs: roots})
	if err := call(backend.addr, direct, "direct-api-key"); err != nil {
		t.Fatalf("API key over TLS without a client certificate: %v", err)
	}

	// Renew the backend's certificate on disk: new handshakes present it without a restart.
	serial := func() int64 {
		conn, err := tls.Dial("tcp", backend.addr, &tls.Config{RootCAs: roots, NextProtos: []string{"h2"}})
		mustT(t, err)
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 10 {
		t.Fatalf("backend presents serial %d, want 10", got)
	}
	ca.Issue(t, pki, "backend", 11)
	deadline := time.Now().Add(10 * time.Second)
	for serial() != 11 {
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate was not picked up within 10 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := call(good.addr, plain, "after-renewal"); err != nil {
		t.Fatalf("through the gateway after the backend's renewal: %v", err)
	}
}
