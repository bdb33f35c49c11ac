package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://idp.example.com"
	testAudience = "loom-api"
)

// Test keys are generated once per test binary: RSA generation is slow.
var (
	rsaKey1 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA() })
	rsaKey2 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA() })
	rsaEvil = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA() })
	ecKey1  = sync.OnceValue(func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func mustRSA() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}

type testJWK struct {
	kid string
	pub crypto.PublicKey
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwkJSON(k testJWK) map[string]any {
	switch pub := k.pub.(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": k.kid, "use": "sig", "n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes())}
	case *ecdsa.PublicKey:
		// The uncompressed point is 0x04 || X || Y, each coordinate the curve's size.
		raw, err := pub.Bytes()
		if err != nil {
			panic(err)
		}
		size := (len(raw) - 1) / 2
		return map[string]any{"kty": "EC", "kid": k.kid, "crv": pub.Curve.Params().Name, "x": b64(raw[1 : 1+size]), "y": b64(raw[1+size:])}
	}
	panic("unsupported key")
}

func jwksJSON(keys ...testJWK) []byte {
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	for _, k := range keys {
		set.Keys = append(set.Keys, jwkJSON(k))
	}
	b, _ := json.Marshal(set)
	return b
}

func writeJWKS(t testing.TB, keys ...testJWK) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwksJSON(keys...), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// validClaims are claims an OIDC verifier configured with testIssuer and testAudience accepts.
func validClaims() jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss":         testIssuer,
		"aud":         []string{testAudience},
		"sub":         "user-1",
		"exp":         now.Add(5 * time.Minute).Unix(),
		"iat":         now.Unix(),
		"loom_tenant": "acme",
		"loom_roles":  []string{"writer", "reader", "superuser"},
	}
}

// sign signs claims with key using method, with extra header fields (nil values delete a field).
func sign(t testing.TB, method jwt.SigningMethod, key any, hdr map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range hdr {
		if v == nil {
			delete(tok.Header, k)
			continue
		}
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// raw builds a compact JWS from a header, claims and a signature, without signing.
func raw(hdr map[string]any, claims jwt.MapClaims, sig []byte) string {
	h, _ := json.Marshal(hdr)
	c, _ := json.Marshal(claims)
	return b64(h) + "." + b64(c) + "." + b64(sig)
}

// fakeClock is a settable clock for tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
