package authn

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/loom-dev/loom/internal/principal"
)

func newOIDCAuthenticator(t *testing.T, cfg Config) *Authenticator {
	t.Helper()
	cfg.Issuer, cfg.Audience = testIssuer, testAudience
	a, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func TestOIDCAttacks(t *testing.T) {
	t.Parallel()
	rsa1, ec1, evil := rsaKey1(), ecKey1(), rsaEvil()
	jwks := writeJWKS(t, testJWK{"rsa1", &rsa1.PublicKey}, testJWK{"ec1", &ec1.PublicKey})
	a := newOIDCAuthenticator(t, Config{JWKSFile: jwks, Leeway: 30 * time.Second})

	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&rsa1.PublicKey))})
	with := func(mod func(c jwt.MapClaims)) jwt.MapClaims {
		c := validClaims()
		mod(c)
		return c
	}
	rs := func(c jwt.MapClaims) string {
		return sign(t, jwt.SigningMethodRS256, rsa1, map[string]any{"kid": "rsa1"}, c)
	}
	now := time.Now()

	tests := []struct {
		name  string
		token func() string
		want  error // nil: accepted
	}{
		{name: "valid RS256", token: func() string { return rs(validClaims()) }},
		{name: "valid ES256", token: func() string {
			return sign(t, jwt.SigningMethodES256, ec1, map[string]any{"kid": "ec1"}, validClaims())
		}},
		{name: "aud list containing audience", token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["aud"] = []string{"other", testAudience} }))
		}},
		{name: "alg none", want: errAlgorithm, token: func() string {
			return raw(map[string]any{"alg": "none", "kid": "rsa1", "typ": "JWT"}, validClaims(), nil)
		}},
		{name: "alg none without kid", want: errAlgorithm, token: func() string {
			return sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, map[string]any{}, validClaims())
		}},
		{name: "HS256 with the RSA public key as secret", want: errAlgorithm, token: func() string {
			return sign(t, jwt.SigningMethodHS256, rsaPEM, map[string]any{"kid": "rsa1"}, validClaims())
		}},
		{name: "wrong audience", want: errAudience, token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["aud"] = "someone-else" }))
		}},
		{name: "missing audience", want: errClaims, token: func() string {
			return rs(with(func(c jwt.MapClaims) { delete(c, "aud") }))
		}},
		{name: "wrong issuer", want: errIssuer, token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["iss"] = "https://evil.example.com" }))
		}},
		{name: "issuer with trailing slash", want: errIssuer, token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["iss"] = testIssuer + "/" }))
		}},
		{name: "expired beyond leeway", want: errExpired, token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix(); c["iat"] = now.Add(-time.Hour).Unix() }))
		}},
		{name: "expired within leeway", token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["exp"] = now.Add(-10 * time.Second).Unix() }))
		}},
		{name: "nbf beyond leeway", want: errNotYetValid, token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["nbf"] = now.Add(2 * time.Minute).Unix() }))
		}},
		{name: "nbf within leeway", token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["nbf"] = now.Add(15 * time.Second).Unix() }))
		}},
		{name: "iat in the future beyond leeway", want: errNotYetValid, token: func() string {
			return rs(with(func(c jwt.MapClaims) { c["iat"] = now.Add(2 * time.Minute).Unix() }))
		}},
		{name: "missing exp", want: errClaims, token: func() string {
			return rs(with(func(c jwt.MapClaims) { delete(c, "exp") }))
		}},
		{name: "missing tenant", want: errClaims, token: func() string {
			return rs(with(func(c jwt.MapClaims) { delete(c, "loom_tenant") }))
		}},
		{name: "missing subject", want: errClaims, token: func() string {
			return rs(with(func(c jwt.MapClaims) { delete(c, "sub") }))
		}},
		{name: "unknown kid", want: errUnknownKey, token: func() string {
			return sign(t, jwt.SigningMethodRS256, rsa1, map[string]any{"kid": "nope"}, validClaims())
		}},
		{name: "no kid with two keys in the set", want: errNoKID, token: func() string {
			return sign(t, jwt.SigningMethodRS256, rsa1, nil, validClaims())
		}},
		{name: "kid of an EC key with RS256", want: errAlgorithm, token: func() string {
			return sign(t, jwt.SigningMethodRS256, rsa1, map[string]any{"kid": "ec1"}, validClaims())
		}},
		{name: "kid of an RSA key with ES256", want: errAlgorithm, token: func() string {
			return sign(t, jwt.SigningMethodES256, ec1, map[string]any{"kid": "rsa1"}, validClaims())
		}},
		{name: "algorithm not configured (RS384)", want: errAlgorithm, token: func() string {
			return sign(t, jwt.SigningMethodRS384, rsa1, map[string]any{"kid": "rsa1"}, validClaims())
		}},
		{name: "signed by another key under a known kid", want: errSignature, token: func() string {
			return sign(t, jwt.SigningMethodRS256, evil, map[string]any{"kid": "rsa1"}, validClaims())
		}},
		{name: "jwk header with the attacker's key", want: errHeader, token: func() string {
			return sign(t, jwt.SigningMethodRS256, evil, map[string]any{"kid": "rsa1", "jwk": jwkJSON(testJWK{"rsa1", &evil.PublicKey})}, validClaims())
		}},
		{name: "jku header", want: errHeader, token: func() string {
			return sign(t, jwt.SigningMethodRS256, evil, map[string]any{"kid": "rsa1", "jku": "https://evil.example.com/jwks"}, validClaims())
		}},
		{name: "x5u header", want: errHeader, token: func() string {
			return sign(t, jwt.SigningMethodRS256, rsa1, map[string]any{"kid": "rsa1", "x5u": "https://evil.example.com/cert"}, validClaims())
		}},
		{name: "crit header", want: errHeader, token: func() string {
			return sign(t, jwt.SigningMethodRS256, rsa1, map[string]any{"kid": "rsa1", "crit": []string{"exp"}, "exp": 1}, validClaims())
		}},
		{name: "tampered payload", want: errSignature, token: func() string {
			parts := strings.Split(rs(validClaims()), ".")
			forged := raw(map[string]any{}, with(func(c jwt.MapClaims) { c["loom_tenant"] = "victim" }), nil)
			return parts[0] + "." + strings.Split(forged, ".")[1] + "." + parts[2]
		}},
		{name: "padded base64 segments", want: errMalformed, token: func() string {
			parts := strings.Split(rs(validClaims()), ".")
			return parts[0] + "=." + parts[1] + "." + parts[2]
		}},
		{name: "two segments", want: errMalformed, token: func() string {
			parts := strings.Split(rs(validClaims()), ".")
			return parts[0] + "." + parts[1]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			token := tt.token()
			p, err := a.oidc.verify(context.Background(), token)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("verify: err = %v, want %v", err, tt.want)
			}
			r := httptest.NewRequest(http.MethodPost, "/loom.memory.v1.MemoryService/Get", nil)
			r.Header.Set("Authorization", "Bearer "+token)
			got, aerr := a.Authenticate(r)
			if tt.want != nil {
				if !errors.Is(aerr, ErrInvalidCredentials) {
					t.Fatalf("Authenticate: err = %v, want ErrInvalidCredentials", aerr)
				}
				return
			}
			want := principal.Principal{Tenant: "acme", Subject: "user-1", Roles: []string{"reader", "writer"}}
			if aerr != nil || got.Tenant != want.Tenant || got.Subject != want.Subject || !slices.Equal(got.Roles, want.Roles) {
				t.Fatalf("Authenticate = %+v, %v; want %+v", got, aerr, want)
			}
			if p.Tenant != want.Tenant {
				t.Fatalf("verify tenant = %q", p.Tenant)
			}
		})
	}
}

func TestOIDCSingleKeyWithoutKID(t *testing.T) {
	t.Parallel()
	a := newOIDCAuthenticator(t, Config{JWKSFile: writeJWKS(t, testJWK{"rsa1", &rsaKey1().PublicKey})})
	if _, err := a.oidc.verify(context.Background(), sign(t, jwt.SigningMethodRS256, rsaKey1(), nil, validClaims())); err != nil {
		t.Fatalf("single key, no kid: %v", err)
	}
	// The single key is still pinned to its type.
	tok := sign(t, jwt.SigningMethodES256, ecKey1(), nil, validClaims())
	if _, err := a.oidc.verify(context.Background(), tok); !errors.Is(err, errAlgorithm) {
		t.Fatalf("single RSA key, ES256 token: err = %v, want errAlgorithm", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	base := Config{Issuer: testIssuer, Audience: testAudience, JWKSFile: "/dev/null"}
	tests := []struct {
		name string
		mod  func(c *Config)
		ok   bool
	}{
		{"base", func(*Config) {}, true},
		{"local mode", func(c *Config) { c.Mode = ModeLocal }, true},
		{"unknown mode", func(c *Config) { c.Mode = "open" }, false},
		{"alg none", func(c *Config) { c.Algorithms = []string{"RS256", "none"} }, false},
		{"HS256", func(c *Config) { c.Algorithms = []string{"HS256"} }, false},
		{"ES384 allowed", func(c *Config) { c.Algorithms = []string{"ES384"} }, true},
		{"leeway too large", func(c *Config) { c.Leeway = 61 * time.Second }, false},
		{"leeway max", func(c *Config) { c.Leeway = 60 * time.Second }, true},
		{"no audience", func(c *Config) { c.Audience = "" }, false},
		{"both file and url", func(c *Config) { c.JWKSURL = "https://idp.example.com/jwks" }, false},
		{"neither file nor url: discovery", func(c *Config) { c.JWKSFile = "" }, true},
		{"discovery from a plain http issuer", func(c *Config) { c.JWKSFile, c.Issuer = "", "http://idp.example.com" }, false},
		{"discovery from an issuer that is no URL", func(c *Config) { c.JWKSFile, c.Issuer = "", "acme-idp" }, false},
		{"plain http url", func(c *Config) { c.JWKSFile, c.JWKSURL = "", "http://idp.example.com/jwks" }, false},
		{"http loopback url", func(c *Config) { c.JWKSFile, c.JWKSURL = "", "http://127.0.0.1:8080/jwks" }, true},
		{"issuer loom-internal", func(c *Config) { c.Issuer = ServiceIssuer }, false},
		{"service keys without services", func(c *Config) { c.ServiceKeys = []ed25519.PublicKey{make(ed25519.PublicKey, 32)} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := base
			tt.mod(&c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// jwksServer serves a key set that tests can swap, and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T, keys ...testJWK) *jwksServer {
	s := &jwksServer{body: jwksJSON(keys...)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys ...testJWK) {
	s.mu.Lock()
	s.body = jwksJSON(keys...)
	s.mu.Unlock()
}

func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	rsa1, rsa2 := rsaKey1(), rsaKey2()
	srv := newJWKSServer(t, testJWK{"k1", &rsa1.PublicKey})
	// Any request the token might direct elsewhere (jku) lands here and fails the test.
	var evilHits atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { evilHits.Add(1) }))
	t.Cleanup(evil.Close)

	a := newOIDCAuthenticator(t, Config{JWKSURL: srv.URL + "/jwks", HTTPClient: srv.Client()})
	clock := &fakeClock{t: time.Now()}
	a.oidc.keys.now = clock.now
	verify := func(kid string, key any) error {
		_, err := a.oidc.verify(context.Background(), sign(t, jwt.SigningMethodRS256, key, map[string]any{"kid": kid}, validClaims()))
		return err
	}
	step := func(name string, err, want error, fetches int32) {
		t.Helper()
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("%s: err = %v, want %v", name, err, want)
		}
		if got := srv.fetches.Load(); got != fetches {
			t.Fatalf("%s: %d fetches, want %d", name, got, fetches)
		}
	}

	step("first token loads the set", verify("k1", rsa1), nil, 1)
	step("cached", verify("k1", rsa1), nil, 1)

	srv.set(testJWK{"k1", &rsa1.PublicKey}, testJWK{"k2", &rsa2.PublicKey})
	clock.add(31 * time.Second)
	step("new kid triggers a refetch", verify("k2", rsa2), nil, 2)
	step("unknown kid right after a fetch does not refetch", verify("k3", rsa2), errUnknownKey, 2)
	step("again", verify("k3", rsa2), errUnknownKey, 2)

	clock.add(31 * time.Second)
	step("unknown kid after 30 s refetches once", verify("k3", rsa2), errUnknownKey, 3)
	step("and not twice", verify("k3", rsa2), errUnknownKey, 3)

	srv.set(testJWK{"k2", &rsa2.PublicKey})
	clock.add(2 * time.Hour)
	step("old set expires; retired kid refused", verify("k1", rsa1), errUnknownKey, 4)
	step("current kid still works", verify("k2", rsa2), nil, 4)

	_, err := a.oidc.verify(context.Background(), sign(t, jwt.SigningMethodRS256, rsa2, map[string]any{"kid": "k2", "jku": evil.URL}, validClaims()))
	step("jku refused", err, errHeader, 4)
	if evilHits.Load() != 0 {
		t.Fatalf("the server named by jku was contacted")
	}
}

func TestJWKSFetchTimeoutAndFailure(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	a := newOIDCAuthenticator(t, Config{JWKSURL: slow.URL, JWKSTimeout: 100 * time.Millisecond})
	start := time.Now()
	tok := sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "k1"}, validClaims())
	if _, err := a.oidc.verify(context.Background(), tok); !errors.Is(err, errKeyset) {
		t.Fatalf("err = %v, want errKeyset", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("fetch took %s despite a 100ms timeout", d)
	}

	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]any{{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}}})
	}))
	t.Cleanup(broken.Close)
	b := newOIDCAuthenticator(t, Config{JWKSURL: broken.URL})
	if _, err := b.oidc.verify(context.Background(), tok); !errors.Is(err, errKeyset) {
		t.Fatalf("weak RSA key in set: err = %v, want errKeyset", err)
	}
}

func TestParseJWKSRejectsOffCurvePoint(t *testing.T) {
	t.Parallel()
	k := jwkJSON(testJWK{"ec1", &ecKey1().PublicKey})
	k["y"] = k["x"] // (x, x) is almost surely not on P-256
	data, _ := json.Marshal(map[string]any{"keys": []any{k}})
	if _, err := parseJWKS(data); err == nil {
		t.Fatal("parseJWKS accepted a point off the curve")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestOIDCDiscovery checks that without a JWKS URL or file the key set is found through the issuer's discovery
// document, that a document naming another issuer or a key set on plain http is refused, and that a failing key
// set URL is discovered again.
func TestOIDCDiscovery(t *testing.T) {
	t.Parallel()
	key := rsaKey1()
	var (
		mu       sync.Mutex
		issuer   string
		jwksPath = "/keys"
		docHits  atomic.Int32
		keyHits  atomic.Int32
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/.well-known/openid-configuration"): // any issuer path gets the one document
			docHits.Add(1)
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": issuer, "jwks_uri": issuer + jwksPath})
		case r.URL.Path == jwksPath:
			keyHits.Add(1)
			_, _ = w.Write(jwksJSON(testJWK{"k1", &key.PublicKey}))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	issuer = srv.URL
	a, err := New(Config{Issuer: issuer, Audience: testAudience}, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	claims := validClaims()
	claims["iss"] = issuer
	token := sign(t, jwt.SigningMethodRS256, key, map[string]any{"kid": "k1"}, claims)
	authenticate := func() (principal.Principal, error) {
		r := httptest.NewRequest(http.MethodPost, "/loom.memory.v1.MemoryService/Get", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		return a.Authenticate(r)
	}
	if p, err := authenticate(); err != nil || p.Tenant != "acme" {
		t.Fatalf("token through discovery: %+v, %v", p, err)
	}
	if docHits.Load() != 1 || keyHits.Load() != 1 {
		t.Errorf("discovery fetched %d times, key set %d times; want 1 and 1", docHits.Load(), keyHits.Load())
	}

	// The document must name the configured issuer: a provider that answers for another issuer is refused.
	b, err := New(Config{Issuer: issuer + "/other", Audience: testAudience}, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	other := validClaims()
	other["iss"] = issuer + "/other"
	r := httptest.NewRequest(http.MethodPost, "/loom.memory.v1.MemoryService/Get", nil)
	r.Header.Set("Authorization", "Bearer "+sign(t, jwt.SigningMethodRS256, key, map[string]any{"kid": "k1"}, other))
	if _, err := b.Authenticate(r); err == nil {
		t.Fatal("a discovery document naming another issuer was trusted")
	}
	if keyHits.Load() != 1 {
		t.Errorf("the key set was fetched for a document with the wrong issuer")
	}

	// A key set that moves is found again: the old URL fails, the next load discovers the new one.
	mu.Lock()
	jwksPath = "/keys-v2"
	mu.Unlock()
	docsBefore := docHits.Load()
	a.oidc.keys.mu.Lock()
	a.oidc.keys.loadedAt = time.Time{}.Add(time.Nanosecond) // expire the cached set
	a.oidc.keys.mu.Unlock()
	if _, err := a.oidc.keys.get(t.Context()); err != nil {
		t.Fatalf("reload with a stale discovered URL: %v", err)
	}
	a.oidc.keys.mu.Lock()
	a.oidc.keys.loadedAt, a.oidc.keys.lastErr, a.oidc.keys.lastFetch = time.Time{}.Add(time.Nanosecond), nil, time.Time{}
	a.oidc.keys.mu.Unlock()
	if _, err := authenticate(); err != nil {
		t.Fatalf("token after the key set moved: %v", err)
	}
	if n := docHits.Load() - docsBefore; n != 1 {
		t.Errorf("discovery fetched %d times after the key set moved, want 1", n)
	}
}
