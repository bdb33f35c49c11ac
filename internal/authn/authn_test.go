package authn

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/loom-dev/loom/internal/logtest"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// Authenticate has the shape rpcserver expects.
var _ rpcserver.Authenticator = (*Authenticator)(nil).Authenticate

// fixture is an Authenticator with every credential type enabled.
type fixture struct {
	a      *Authenticator
	store  *KeyStore
	minter *Minter
	key    string // a valid API key: tenant "acme", roles reader
	logs   *logtest.Buffer
}

func newFixture(t testing.TB, mode Mode) *fixture {
	t.Helper()
	store, err := NewKeyStore(context.Background(), sqldbtest.Open(t, sqldb.SQLite))
	if err != nil {
		t.Fatal(err)
	}
	plain, _, err := store.Create(context.Background(), "acme", "test", []string{"reader"}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	svcKey := newEd25519(t)
	minter, _ := NewMinter(svcKey, 0)
	logs := &logtest.Buffer{}
	a, err := New(Config{
		Mode:        mode,
		Issuer:      testIssuer,
		Audience:    testAudience,
		JWKSFile:    writeJWKS(t, testJWK{"rsa1", &rsaKey1().PublicKey}, testJWK{"ec1", &ecKey1().PublicKey}),
		Services:    []string{memorySvc},
		ServiceKeys: []ed25519.PublicKey{svcKey.Public().(ed25519.PublicKey)},
	}, store, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{a: a, store: store, minter: minter, key: plain, logs: logs}
}

func request(path string, hdr ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ModeRequired)
	local := newFixture(t, ModeLocal)
	svcToken, _ := f.minter.Mint(principal.Principal{Tenant: "acme", Subject: "alice", Roles: []string{"admin"}}, memorySvc)
	oidcToken := sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"}, validClaims())
	keyOnly, err := New(Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}

	apiKeyPrincipal := func(p principal.Principal) bool { return p.Tenant == "acme" && strings.HasPrefix(p.Subject, "apikey:") }
	tests := []struct {
		name string
		a    *Authenticator
		r    *http.Request
		want error
		ok   func(principal.Principal) bool
	}{
		{name: "required, no credentials", a: f.a, r: request(memoryGet), want: ErrNoCredentials},
		{name: "local, no credentials", a: local.a, r: request(memoryGet),
			ok: func(p principal.Principal) bool { return p.Tenant == principal.Local.Tenant }},
		{name: "local, bad credentials still refused", a: local.a, r: request(memoryGet, "Authorization", "Bearer loom_x_y"), want: ErrInvalidCredentials},
		{name: "api key as bearer", a: f.a, r: request(memoryGet, "Authorization", "Bearer "+f.key), ok: apiKeyPrincipal},
		{name: "api key, lowercase scheme", a: f.a, r: request(memoryGet, "Authorization", "bearer "+f.key), ok: apiKeyPrincipal},
		{name: "api key in X-Api-Key", a: f.a, r: request(memoryGet, "X-Api-Key", f.key), ok: apiKeyPrincipal},
		{name: "X-Api-Key not an api key", a: f.a, r: request(memoryGet, "X-Api-Key", oidcToken), want: ErrInvalidCredentials},
		{name: "both headers", a: f.a, r: request(memoryGet, "Authorization", "Bearer "+f.key, "X-Api-Key", f.key), want: ErrInvalidCredentials},
		{name: "two Authorization headers", a: f.a, r: request(memoryGet, "Authorization", "Bearer "+f.key, "Authorization", "Bearer "+f.key), want: ErrInvalidCredentials},
		{name: "basic scheme", a: f.a, r: request(memoryGet, "Authorization", "Basic dXNlcjpwYXNz"), want: ErrInvalidCredentials},
		{name: "bearer with no token", a: f.a, r: request(memoryGet, "Authorization", "Bearer "), want: ErrInvalidCredentials},
		{name: "double space", a: f.a, r: request(memoryGet, "Authorization", "Bearer  "+f.key), want: ErrInvalidCredentials},
		{name: "api key missing (empty X-Api-Key)", a: f.a, r: request(memoryGet, "X-Api-Key", ""), want: ErrInvalidCredentials},
		{name: "api keys disabled", a: keyOnly, r: request(memoryGet, "Authorization", "Bearer "+f.key), want: ErrInvalidCredentials},
		{name: "service token", a: f.a, r: request(memoryGet, "Authorization", "Bearer "+svcToken),
			ok: func(p principal.Principal) bool {
				return p.Tenant == "acme" && p.Subject == "alice" && slices.Contains(p.Roles, "admin")
			}},
		{name: "service token for another path", a: f.a, r: request("/"+agentSvc+"/Run", "Authorization", "Bearer "+svcToken), want: ErrInvalidCredentials},
		{name: "service tokens disabled", a: keyOnly, r: request(memoryGet, "Authorization", "Bearer "+svcToken), want: ErrInvalidCredentials},
		{name: "oidc token", a: f.a, r: request(memoryGet, "Authorization", "Bearer "+oidcToken),
			ok: func(p principal.Principal) bool { return p.Tenant == "acme" && p.Subject == "user-1" }},
		{name: "oidc disabled", a: keyOnly, r: request(memoryGet, "Authorization", "Bearer "+oidcToken), want: ErrInvalidCredentials},
		{name: "oidc-signed token claiming loom-internal", a: f.a, want: ErrInvalidCredentials,
			r: request(memoryGet, "Authorization", "Bearer "+sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"},
				jwt.MapClaims{"iss": ServiceIssuer, "aud": memorySvc, "sub": "x", "loom_tenant": "acme", "exp": time.Now().Add(time.Minute).Unix()}))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.a.Authenticate(tt.r)
			if tt.want != nil {
				if err != tt.want { // exact sentinel: nothing else may leak out
					t.Fatalf("err = %v, want %v", err, tt.want)
				}
				if p.Tenant != "" {
					t.Fatalf("principal %+v returned with an error", p)
				}
				return
			}
			if err != nil || !tt.ok(p) {
				t.Fatalf("Authenticate = %+v, %v", p, err)
			}
		})
	}
}

func TestInternalHeadersStripped(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ModeLocal)
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer " + f.key}} {
		r := request(memoryGet, hdr...)
		r.Header.Set("X-Loom-Tenant", "victim")
		r.Header["x-loom-roles"] = []string{"admin"} // non-canonical spelling, set directly
		p, err := f.a.Authenticate(r)
		if err != nil || p.Tenant == "victim" {
			t.Fatalf("Authenticate = %+v, %v", p, err)
		}
		for name := range r.Header {
			if strings.HasPrefix(strings.ToLower(name), "x-loom-") {
				t.Fatalf("header %s not stripped", name)
			}
		}
	}
}

// TestCanary plants secret-looking credentials, drives every failure path, and checks that no credential ever
// shows up in an error or a log line.
func TestCanary(t *testing.T) {
	t.Parallel()
	const canary = "qqcanaryqq" // valid base32, so it survives the API-key format checks
	ctx := context.Background()
	f := newFixture(t, ModeRequired)
	keyID := f.key[len(APIKeyPrefix) : len(APIKeyPrefix)+keyIDLen]
	canarySecret := strings.Repeat(canary, 6)[:keySecretLen]

	revoked, rk, _ := f.store.Create(ctx, "acme", "old", []string{"reader"}, time.Time{})
	_ = f.store.Revoke(ctx, "acme", rk.ID)
	expiring, _, _ := f.store.Create(ctx, "acme", "exp", []string{"reader"}, time.Now().Add(time.Hour))
	f.store.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	svcOther, _ := NewMinter(newEd25519(t), 0)
	svcToken, _ := svcOther.Mint(principal.Principal{Tenant: "acme", Subject: canary}, memorySvc)
	goodMinted, _ := f.minter.Mint(principal.Principal{Tenant: "acme", Subject: canary}, agentSvc)
	c := func(mod func(jwt.MapClaims)) jwt.MapClaims { m := validClaims(); mod(m); return m }

	// Each credential is secret; canary appears in each one too.
	creds := []string{
		"loom_" + keyID + "_" + canarySecret,                        // wrong secret
		"loom_" + (canary + canary)[:keyIDLen] + "_" + canarySecret, // unknown id
		"loom_" + canary + "_" + canary,                             // malformed
		revoked + canary, revoked,                                   // revoked (and malformed variant)
		expiring,                             // expired
		canary,                               // not a JWT
		canary + "." + canary + "." + canary, // bad base64 JSON
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": canary}, c(func(m jwt.MapClaims) { m["sub"] = canary })),
		sign(t, jwt.SigningMethodRS256, rsaEvil(), map[string]any{"kid": "rsa1", "x": canary}, c(func(m jwt.MapClaims) { m["sub"] = canary })),
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"}, c(func(m jwt.MapClaims) { m["aud"] = canary })),
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"}, c(func(m jwt.MapClaims) { m["iss"] = canary })),
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"}, c(func(m jwt.MapClaims) { m["exp"] = canary })),
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"}, c(func(m jwt.MapClaims) { m["loom_tenant"] = 7; m["sub"] = canary })),
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1", "jku": "https://" + canary}, validClaims()),
		sign(t, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1", "crit": []string{canary}}, validClaims()),
		raw(map[string]any{"alg": canary, "kid": "rsa1"}, validClaims(), []byte(canary)),
		raw(map[string]any{"alg": "none"}, c(func(m jwt.MapClaims) { m["sub"] = canary }), nil),
		raw(map[string]any{"alg": "EdDSA", "kid": canary, "typ": serviceTokenType}, jwt.MapClaims{"iss": ServiceIssuer, "sub": canary}, []byte(canary)),
		svcToken, goodMinted,
	}
	var errs []string
	run := func(a *Authenticator, hdr ...string) {
		_, err := a.Authenticate(request(memoryGet, hdr...))
		if err == nil {
			t.Fatalf("a planted credential was accepted: %v", hdr)
		}
		errs = append(errs, err.Error())
	}
	for _, cred := range creds {
		run(f.a, "Authorization", "Bearer "+cred)
		run(f.a, "X-Api-Key", cred)
		run(f.a, "Authorization", "Bearer "+cred, "X-Api-Key", cred)
		run(f.a, "Authorization", "Basic "+cred)
	}
	// The store is down: the error path that logs an error value.
	down := newFixture(t, ModeRequired)
	down.store.db.Close()
	run(down.a, "Authorization", "Bearer "+down.key)
	creds = append(creds, down.key)

	logs := f.logs.String() + down.logs.String()
	if !strings.Contains(logs, "authentication failed") || !strings.Contains(logs, "authentication unavailable") {
		t.Fatalf("failure paths did not log:\n%s", logs)
	}
	secrets := []string{canary}
	for _, cred := range creds {
		// Any 12-character window of a credential's tail is too much to leak.
		if len(cred) > 12 {
			secrets = append(secrets, cred[len(cred)-12:])
		}
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("log output contains a secret %q:\n%s", s, logs)
		}
		for _, e := range errs {
			if strings.Contains(e, s) {
				t.Errorf("error %q contains a secret", e)
			}
		}
	}
	for _, e := range slices.Compact(slices.Sorted(slices.Values(errs))) {
		if e != ErrInvalidCredentials.Error() && e != ErrUnavailable.Error() {
			t.Errorf("unexpected error text %q", e)
		}
	}
}

func FuzzAuthenticate(f *testing.F) {
	fx := newFixture(f, ModeRequired)
	tok := sign(f, jwt.SigningMethodRS256, rsaKey1(), map[string]any{"kid": "rsa1"}, validClaims())
	svc, _ := fx.minter.Mint(principal.Principal{Tenant: "acme", Subject: "s"}, memorySvc)
	f.Add("Bearer "+fx.key, "", memoryGet)
	f.Add("", fx.key, memoryGet)
	f.Add("Bearer "+tok, "", memoryGet)
	f.Add("Bearer "+svc, "", memoryGet)
	f.Add("Bearer "+svc[:len(svc)-3], "", "/a/b")
	f.Add("Bearer eyJhbGciOiJub25lIn0.e30.", "", memoryGet)
	f.Add("bearer loom_aaaaaaaaaaaaaaaa_", "loom_", "//")
	f.Fuzz(func(t *testing.T, authz, apiKey, path string) {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.URL.Path = path
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		if apiKey != "" {
			r.Header.Set("X-Api-Key", apiKey)
		}
		p, err := fx.a.Authenticate(r)
		switch {
		case err == nil:
			if p.Tenant == "" || p.Subject == "" {
				t.Fatalf("accepted with an empty principal: %+v", p)
			}
			if authz == "" && apiKey == "" {
				t.Fatal("required mode accepted a request without credentials")
			}
		case err != ErrInvalidCredentials && err != ErrNoCredentials && err != ErrUnavailable:
			t.Fatalf("unexpected error %v", err)
		}
	})
}
