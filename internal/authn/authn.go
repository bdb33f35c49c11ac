// Package authn authenticates RPCs: it turns the credentials of an HTTP request into a [principal.Principal]
// before the request body is read (see rpcserver.Authenticator).
//
// Three kinds of credentials are accepted, all as "Authorization: Bearer <credential>":
//   - API keys "loom_<id>_<secret>", kept in a [KeyStore] (also accepted in an "X-Api-Key" header);
//   - service-to-service tokens: short-lived EdDSA JWTs with iss "loom-internal", minted by a [Minter] and checked
//     by a [ServiceVerifier];
//   - OpenID Connect bearer tokens: JWTs signed by a provider's key set (JWKS), checked following RFC 8725.
//
// Errors returned to callers are generic; the reason a credential was refused is logged, never the credential.
package authn

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/tlsfiles"
)

// Errors returned by [Authenticator.Authenticate]. They say nothing about why a credential was refused.
var (
	// ErrNoCredentials means the request carries no credentials and the mode requires them.
	ErrNoCredentials = errors.New("authn: credentials required")
	// ErrInvalidCredentials means the request's credentials were refused.
	ErrInvalidCredentials = errors.New("authn: invalid credentials")
	// ErrUnavailable means credentials could not be checked (for example, the key store is down).
	ErrUnavailable = errors.New("authn: authentication unavailable")
)

// Mode says what happens to a request without credentials.
type Mode string

const (
	// ModeRequired refuses requests without credentials. It is the default.
	ModeRequired Mode = "required"
	// ModeLocal, for development, gives requests without credentials [principal.Local]. Credentials that are
	// present are still verified, and refused if invalid.
	ModeLocal Mode = "local"
)

// Defaults of [Config].
const (
	DefaultTenantClaim = "loom_tenant"
	DefaultRolesClaim  = "loom_roles"
	MaxLeeway          = 60 * time.Second
	DefaultJWKSTimeout = 10 * time.Second
)

// Config configures an [Authenticator]. The zero value accepts API keys only and requires credentials.
type Config struct {
	// Mode is ModeRequired (the default when empty) or ModeLocal.
	Mode Mode
	// Throttle, when set, slows credential guessing (see [Throttle]); Authenticate then also returns
	// *ThrottledError.
	Throttle *Throttle

	// Issuer is the OIDC provider's issuer, matched exactly against iss. Empty disables OIDC tokens. It may not be
	// "loom-internal".
	Issuer string
	// Audience must be one of a token's aud values. Required with Issuer.
	Audience string
	// JWKSURL is where the provider's key set is fetched (https, or http to a loopback address only). With
	// neither JWKSURL nor JWKSFile, the key set's URL is discovered from the issuer's
	// /.well-known/openid-configuration (OpenID Connect Discovery 1.0), whose "issuer" must equal Issuer.
	JWKSURL string
	// JWKSFile is a file holding the provider's key set.
	JWKSFile string
	// Algorithms are the accepted signature algorithms; default ["RS256", "ES256"]. Only RS*, PS* and ES* are
	// allowed: never "none" and never HS*.
	Algorithms []string
	// TenantClaim names the claim holding the tenant; default "loom_tenant".
	TenantClaim string
	// RolesClaim names the claim holding the roles (an array of strings, or a space-separated string); default
	// "loom_roles". Roles other than reader, writer and admin are ignored.
	RolesClaim string
	// Leeway absorbs clock skew when checking exp, nbf and iat: 0 (the default) to 60 s.
	Leeway time.Duration
	// JWKSTimeout bounds one fetch of JWKSURL; default 10 s.
	JWKSTimeout time.Duration
	// JWKSMaxAge is how long a fetched key set is used before it is fetched again; default 1 h. An unknown kid
	// also triggers a fetch, at most once every 30 s.
	JWKSMaxAge time.Duration
	// HTTPClient fetches JWKSURL; nil means a client of its own.
	HTTPClient *http.Client

	// Services are the full names of the services this process serves ("loom.memory.v1.MemoryService"): the
	// audiences service tokens may name.
	Services []string
	// ServiceKeys verify service tokens (more than one during a rotation). Empty disables service tokens.
	ServiceKeys []ed25519.PublicKey
	// ServiceClientCert accepts service tokens only on TLS connections whose client presented a certificate the
	// server verified (mutual TLS, see rpcserver.Config.TLSClientCAFile): a token captured off the network, or
	// minted by a process holding the signing key but no certificate, is refused. The token still names the
	// principal.
	ServiceClientCert bool
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	if c.Mode != "" && c.Mode != ModeRequired && c.Mode != ModeLocal {
		return fmt.Errorf("authn: unknown mode %q", c.Mode)
	}
	if c.Issuer == "" {
		if c.Audience != "" || c.JWKSURL != "" || c.JWKSFile != "" || len(c.Algorithms) > 0 {
			return errors.New("authn: OIDC settings given without an issuer")
		}
	} else {
		if c.Issuer == ServiceIssuer {
			return fmt.Errorf("authn: OIDC issuer may not be %q", ServiceIssuer)
		}
		if c.Audience == "" {
			return errors.New("authn: OIDC needs an audience")
		}
		switch {
		case c.JWKSURL != "" && c.JWKSFile != "":
			return errors.New("authn: OIDC takes at most one of JWKSURL and JWKSFile")
		case c.JWKSURL != "":
			if err := checkJWKSURL(c.JWKSURL); err != nil {
				return err
			}
		case c.JWKSFile == "":
			// The key set is discovered from the issuer, which must then be a URL fit to fetch.
			if err := checkJWKSURL(c.Issuer); err != nil {
				return errors.New("authn: without JWKSURL or JWKSFile the issuer must be an https URL (OIDC discovery)")
			}
		}
		for _, alg := range c.Algorithms {
			if !slices.Contains(oidcAlgorithms, alg) {
				return fmt.Errorf("authn: algorithm %q not allowed for OIDC", alg)
			}
		}
	}
	if c.Leeway < 0 || c.Leeway > MaxLeeway {
		return fmt.Errorf("authn: leeway must be between 0 and %s", MaxLeeway)
	}
	if len(c.ServiceKeys) > 0 && len(c.Services) == 0 {
		return errors.New("authn: service keys given without services")
	}
	return nil
}

func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("authn: bad JWKS URL")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
	}
	return errors.New("authn: JWKS URL must be https")
}

// Authenticator checks the credentials of requests. It is safe for concurrent use.
type Authenticator struct {
	mode     Mode
	logger   *slog.Logger
	keys     *KeyStore
	oidc     *oidcVerifier
	services *ServiceVerifier
	throttle *Throttle
	mtls     bool // service tokens need a verified client certificate
}

// New returns an Authenticator. keys may be nil (API keys are then refused); logger may be nil (no logs).
func New(cfg Config, keys *KeyStore, logger *slog.Logger) (*Authenticator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{mode: cfg.Mode, logger: logger, keys: keys, throttle: cfg.Throttle, mtls: cfg.ServiceClientCert}
	if a.mode == "" {
		a.mode = ModeRequired
	}
	if cfg.Issuer != "" {
		def := func(s *string, d string) {
			if *s == "" {
				*s = d
			}
		}
		def(&cfg.TenantClaim, DefaultTenantClaim)
		def(&cfg.RolesClaim, DefaultRolesClaim)
		if len(cfg.Algorithms) == 0 {
			cfg.Algorithms = []string{"RS256", "ES256"}
		}
		if cfg.JWKSTimeout <= 0 {
			cfg.JWKSTimeout = DefaultJWKSTimeout
		}
		if cfg.JWKSMaxAge <= 0 {
			cfg.JWKSMaxAge = defaultJWKSMaxAge
		}
		client := cfg.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: cfg.JWKSTimeout}
		}
		a.oidc = &oidcVerifier{
			issuer:      cfg.Issuer,
			audience:    cfg.Audience,
			algs:        slices.Clone(cfg.Algorithms),
			tenantClaim: cfg.TenantClaim,
			rolesClaim:  cfg.RolesClaim,
			leeway:      cfg.Leeway,
			now:         time.Now,
			keys: &keySet{
				file: cfg.JWKSFile, url: cfg.JWKSURL, issuer: cfg.Issuer, client: client,
				timeout: cfg.JWKSTimeout, maxAge: cfg.JWKSMaxAge, now: time.Now,
			},
		}
	}
	if len(cfg.ServiceKeys) > 0 {
		sv, err := NewServiceVerifier(cfg.Services, cfg.ServiceKeys...)
		if err != nil {
			return nil, err
		}
		a.services = sv
	}
	return a, nil
}

// internalHeaderPrefix marks headers Loom's own plumbing may set. They are never trusted from the network.
const internalHeaderPrefix = "X-Loom-"

// Authenticate returns the principal of r, or ErrNoCredentials, ErrInvalidCredentials, ErrUnavailable or (with a
// Throttle) a *ThrottledError. It
// matches rpcserver.Authenticator. It also deletes every inbound "X-Loom-*" header from r, so nothing downstream
// can mistake a caller's header for one set by Loom.
func (a *Authenticator) Authenticate(r *http.Request) (principal.Principal, error) {
	for name := range r.Header {
		if len(name) >= len(internalHeaderPrefix) && strings.EqualFold(name[:len(internalHeaderPrefix)], internalHeaderPrefix) {
			delete(r.Header, name)
		}
	}
	ctx := r.Context()
	if a.throttle != nil {
		if err := a.throttle.check(r); err != nil {
			return principal.Principal{}, err
		}
	}
	kind, p, err := a.authenticate(ctx, r)
	if err == nil {
		return p, nil
	}
	var why reason
	if !errors.As(err, &why) {
		// Not a verdict on the credential: the store or key set failed. err never holds the credential.
		a.logger.LogAttrs(ctx, slog.LevelError, "authentication unavailable", slog.String("kind", kind), slog.Any("err", err))
		return principal.Principal{}, ErrUnavailable
	}
	a.logger.LogAttrs(ctx, slog.LevelInfo, "authentication failed", slog.String("kind", kind), slog.String("reason", string(why)))
	if why == errNoCreds {
		return principal.Principal{}, ErrNoCredentials
	}
	if a.throttle != nil {
		a.throttle.fail(r)
	}
	return principal.Principal{}, ErrInvalidCredentials
}

func (a *Authenticator) authenticate(ctx context.Context, r *http.Request) (kind string, p principal.Principal, err error) {
	authz, apiKey := r.Header.Values("Authorization"), r.Header.Values("X-Api-Key")
	switch {
	case len(authz) == 0 && len(apiKey) == 0:
		if a.mode == ModeLocal {
			return "none", principal.Local, nil
		}
		return "none", principal.Principal{}, errNoCreds
	case len(authz)+len(apiKey) > 1:
		return "none", principal.Principal{}, errAmbiguous
	}
	var cred string
	if len(apiKey) == 1 {
		cred = apiKey[0]
		if !strings.HasPrefix(cred, APIKeyPrefix) {
			return "apikey", principal.Principal{}, errMalformed
		}
	} else {
		var ok bool
		if cred, ok = bearer(authz[0]); !ok {
			return "bearer", principal.Principal{}, errMalformed
		}
	}

	if strings.HasPrefix(cred, APIKeyPrefix) {
		if a.keys == nil {
			return "apikey", principal.Principal{}, errDisabled
		}
		k, err := a.keys.Verify(ctx, cred)
		if err != nil {
			return "apikey", principal.Principal{}, err
		}
		return "apikey", principal.Principal{Tenant: k.Tenant, Subject: "apikey:" + k.ID, Roles: k.Roles}, nil
	}
	iss, err := peekIssuer(cred)
	if err != nil {
		return "jwt", principal.Principal{}, err
	}
	if iss == ServiceIssuer {
		if a.services == nil {
			return "service", principal.Principal{}, errDisabled
		}
		if a.mtls && !tlsfiles.Verified(r.TLS) {
			return "service", principal.Principal{}, errClientCert
		}
		p, err := a.services.Verify(cred, r.URL.Path)
		if err == nil && a.mode == ModeRequired && p.Tenant == principal.Local.Tenant && p.Subject == principal.Local.Subject {
			// Minted by a process in --auth local mode for an anonymous caller (a gateway in front of us, for
			// example): this process would never grant that principal itself, so no token may carry it here.
			return "service", principal.Principal{}, errLocalOnly
		}
		return "service", p, err
	}
	if a.oidc == nil {
		return "oidc", principal.Principal{}, errDisabled
	}
	p, err = a.oidc.verify(ctx, cred)
	return "oidc", p, err
}

// bearer returns the credential of an "Authorization: Bearer <credential>" value (the scheme is case-insensitive,
// RFC 9110 11.1). The credential must be visible ASCII without spaces.
func bearer(v string) (string, bool) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	cred := v[len(scheme):]
	if len(cred) > maxTokenLen {
		return "", false
	}
	for i := 0; i < len(cred); i++ {
		if cred[i] <= ' ' || cred[i] > '~' {
			return "", false
		}
	}
	return cred, true
}
