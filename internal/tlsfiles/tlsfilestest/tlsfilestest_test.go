package tlsfilestest_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/loom-dev/loom/internal/tlsfiles/tlsfilestest"
)

// TestIssue checks an issued certificate loads with its key and verifies against its CA, for 127.0.0.1 and for
// both server and client use, and not against another CA.
func TestIssue(t *testing.T) {
	t.Parallel()
	ca, other := tlsfilestest.NewCA(t, "test-ca"), tlsfilestest.NewCA(t, "other-ca")
	certFile, keyFile := ca.Issue(t, t.TempDir(), "svc", 7)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "127.0.0.1", KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for usage %v: %v", usage, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: other.Pool()}); err == nil {
		t.Error("verified against another CA")
	}
	if leaf.SerialNumber.Int64() != 7 || leaf.Subject.CommonName != "svc" {
		t.Errorf("serial %v, name %q; want 7, svc", leaf.SerialNumber, leaf.Subject.CommonName)
	}
}
