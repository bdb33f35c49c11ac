package rpcserver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	memoryv1 "github.com/loom-dev/loom/gen/loom/memory/v1"
	"github.com/loom-dev/loom/gen/loom/memory/v1/memoryv1connect"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns their paths and a pool trusting it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loom-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, pool := selfSigned(t)
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
