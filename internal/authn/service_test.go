package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/loom-dev/loom/internal/principal"
)

const (
	memorySvc = "loom.memory.v1.MemoryService"
	agentSvc  = "loom.agent.v1.AgentService"
	memoryGet = "/" + memorySvc + "/Get"
)

func newEd25519(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestServiceTokens(t *testing.T) {
	t.Parallel()
	key, other := newEd25519(t), newEd25519(t)
	pub := key.Public().(ed25519.PublicKey)
	m, err := NewMinter(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewServiceVerifier([]string{memorySvc}, pub)
	if err != nil {
		t.Fatal(err)
	}
	alice := principal.Principal{Tenant: "acme", Subject: "alice", Roles: []string{"writer"}}
	mint := func(m *Minter, p principal.Principal, aud string) string {
		tok, err := m.Mint(p, aud)
		if err != nil {
			t.Fatalf("Mint: %v", err)
		}
		return tok
	}
	otherMinter, _ := NewMinter(other, 0)
	pastMinter, _ := NewMinter(key, 0)
	pastMinter.now = func() time.Time { return time.Now().Add(-2 * time.Minute) }
	claims := func(mod func(c jwt.MapClaims)) jwt.MapClaims {
		now := time.Now()
		c := jwt.MapClaims{"iss": ServiceIssuer, "sub": "alice", "aud": memorySvc, "iat": now.Unix(),
			"exp": now.Add(time.Minute).Unix(), "loom_tenant": "acme", "loom_roles": []string{"writer"}}
		mod(c)
		return c
	}
	hdr := map[string]any{"kid": KeyID(pub), "typ": serviceTokenType}

	tests := []struct {
		name      string
		token     string
		procedure string
		want      error
	}{
		{name: "valid", token: mint(m, alice, memorySvc), procedure: memoryGet},
		{name: "wrong audience", token: mint(m, alice, agentSvc), procedure: memoryGet, want: errAudience},
		{name: "service not served here", token: mint(m, alice, agentSvc), procedure: "/" + agentSvc + "/Run", want: errAudience},
		{name: "malformed procedure", token: mint(m, alice, memorySvc), procedure: memorySvc, want: errAudience},
		{name: "expired", token: mint(pastMinter, alice, memorySvc), procedure: memoryGet, want: errExpired},
		{name: "signed by another key", token: mint(otherMinter, alice, memorySvc), procedure: memoryGet, want: errUnknownKey},
		{name: "signed by another key under our kid", procedure: memoryGet, want: errSignature,
			token: sign(t, jwt.SigningMethodEdDSA, other, hdr, claims(func(jwt.MapClaims) {}))},
		{name: "alg changed to HS256 keyed with the public key", procedure: memoryGet, want: errAlgorithm,
			token: sign(t, jwt.SigningMethodHS256, []byte(pub), hdr, claims(func(jwt.MapClaims) {}))},
		{name: "alg none", procedure: memoryGet, want: errAlgorithm,
			token: raw(map[string]any{"alg": "none", "kid": KeyID(pub), "typ": serviceTokenType}, claims(func(jwt.MapClaims) {}), nil)},
		{name: "missing typ", procedure: memoryGet, want: errHeader,
			token: sign(t, jwt.SigningMethodEdDSA, key, map[string]any{"kid": KeyID(pub)}, claims(func(jwt.MapClaims) {}))},
		{name: "missing exp", procedure: memoryGet, want: errClaims,
			token: sign(t, jwt.SigningMethodEdDSA, key, hdr, claims(func(c jwt.MapClaims) { delete(c, "exp") }))},
		{name: "lifetime too long", procedure: memoryGet, want: errClaims,
			token: sign(t, jwt.SigningMethodEdDSA, key, hdr, claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(time.Hour).Unix() }))},
		{name: "two audiences", procedure: memoryGet, want: errAudience,
			token: sign(t, jwt.SigningMethodEdDSA, key, hdr, claims(func(c jwt.MapClaims) { c["aud"] = []string{memorySvc, agentSvc} }))},
		{name: "wrong issuer", procedure: memoryGet, want: errIssuer,
			token: sign(t, jwt.SigningMethodEdDSA, key, hdr, claims(func(c jwt.MapClaims) { c["iss"] = "someone" }))},
		{name: "unknown role", procedure: memoryGet, want: errClaims,
			token: sign(t, jwt.SigningMethodEdDSA, key, hdr, claims(func(c jwt.MapClaims) { c["loom_roles"] = []string{"root"} }))},
		{name: "no tenant", procedure: memoryGet, want: errClaims,
			token: sign(t, jwt.SigningMethodEdDSA, key, hdr, claims(func(c jwt.MapClaims) { delete(c, "loom_tenant") }))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := v.Verify(tt.token, tt.procedure)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify: err = %v, want %v", err, tt.want)
			}
			if tt.want == nil && (p.Tenant != alice.Tenant || p.Subject != alice.Subject || !slices.Equal(p.Roles, alice.Roles)) {
				t.Fatalf("Verify = %+v, want %+v", p, alice)
			}
		})
	}
}

func TestServiceKeyRotation(t *testing.T) {
	t.Parallel()
	oldKey, newKey := newEd25519(t), newEd25519(t)
	v, err := NewServiceVerifier([]string{memorySvc}, oldKey.Public().(ed25519.PublicKey), newKey.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []ed25519.PrivateKey{oldKey, newKey} {
		m, _ := NewMinter(k, 30*time.Second)
		tok, _ := m.Mint(principal.Principal{Tenant: "t", Subject: "s"}, memorySvc)
		if _, err := v.Verify(tok, memoryGet); err != nil {
			t.Fatalf("rotation: %v", err)
		}
	}
	// Without kid, a verifier holding two keys cannot choose.
	tok := sign(t, jwt.SigningMethodEdDSA, newKey, map[string]any{"typ": serviceTokenType}, jwt.MapClaims{
		"iss": ServiceIssuer, "sub": "s", "aud": memorySvc, "loom_tenant": "t",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Minute).Unix()})
	if _, err := v.Verify(tok, memoryGet); !errors.Is(err, errNoKID) {
		t.Fatalf("no kid: err = %v, want errNoKID", err)
	}
}

func TestMinterRefuses(t *testing.T) {
	t.Parallel()
	if _, err := NewMinter(newEd25519(t), time.Hour); err == nil {
		t.Error("NewMinter accepted a 1 h ttl")
	}
	m, _ := NewMinter(newEd25519(t), 0)
	for name, tc := range map[string]struct {
		p   principal.Principal
		aud string
	}{
		"no tenant":   {principal.Principal{Subject: "s"}, memorySvc},
		"bad role":    {principal.Principal{Tenant: "t", Subject: "s", Roles: []string{"root"}}, memorySvc},
		"path as aud": {principal.Principal{Tenant: "t", Subject: "s"}, memoryGet},
	} {
		if _, err := m.Mint(tc.p, tc.aud); err == nil {
			t.Errorf("%s: Mint succeeded", name)
		}
	}
}

func TestKeyLoading(t *testing.T) {
	t.Parallel()
	key := newEd25519(t)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	got, err := ParsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil || !got.Equal(key) {
		t.Fatalf("ParsePrivateKeyPEM: %v", err)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		got, err := PrivateKeyFromSeed(enc.EncodeToString(key.Seed()))
		if err != nil || !got.Equal(key) {
			t.Fatalf("PrivateKeyFromSeed: %v", err)
		}
	}
	if _, err := PrivateKeyFromSeed(base64.StdEncoding.EncodeToString(make([]byte, 31))); err == nil {
		t.Fatal("PrivateKeyFromSeed accepted 31 bytes")
	}
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey1())
	if _, err := ParsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER})); err == nil {
		t.Fatal("ParsePrivateKeyPEM accepted an RSA key")
	}
}

// TestLocalPrincipalNeedsLocalMode checks that a service token minted for the anonymous development principal
// (by a gateway in --auth local mode, say) is refused by a process in --auth required mode and accepted in local
// mode, while a real tenant's token passes both.
func TestLocalPrincipalNeedsLocalMode(t *testing.T) {
	t.Parallel()
	key := newEd25519(t)
	m, err := NewMinter(key, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []Mode{ModeRequired, ModeLocal} {
		a, err := New(Config{Mode: mode, Services: []string{memorySvc}, ServiceKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []principal.Principal{principal.Local, {Tenant: "acme", Subject: "alice", Roles: []string{"admin"}}} {
			tok, err := m.Mint(p, memorySvc)
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest(http.MethodPost, memoryGet, nil)
			r.Header.Set("Authorization", "Bearer "+tok)
			_, err = a.Authenticate(r)
			refused := mode == ModeRequired && p.Subject == principal.Local.Subject
			if refused != (err != nil) {
				t.Errorf("mode %s, principal %s/%s: err = %v, want refused %v", mode, p.Tenant, p.Subject, err, refused)
			}
		}
	}
}
