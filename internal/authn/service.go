package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/procedure"
)

// ServiceIssuer is the iss of every service-to-service token.
const ServiceIssuer = "loom-internal"

// serviceTokenType is the typ header of service tokens (explicit typing, RFC 8725 3.11): a token of another kind
// signed by the same key cannot pass for one.
const serviceTokenType = "loom-s2s+jwt"

const (
	// DefaultServiceTokenTTL is how long a minted service token lives unless the Minter is told otherwise.
	DefaultServiceTokenTTL = 60 * time.Second
	// MaxServiceTokenTTL bounds both minting and verification: a token claiming a longer life is refused.
	MaxServiceTokenTTL = 10 * time.Minute
	// serviceLeeway absorbs clock skew between Loom's own machines.
	serviceLeeway = 5 * time.Second
)

type serviceClaims struct {
	jwt.RegisteredClaims
	Tenant string   `json:"loom_tenant"`
	Roles  []string `json:"loom_roles"`
}

// KeyID names an Ed25519 public key in the kid header of the tokens it verifies: the first 8 bytes of its
// SHA-256, base64url.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:8])
}

// Minter mints short-lived service-to-service tokens signed with Ed25519. It is safe for concurrent use.
type Minter struct {
	key ed25519.PrivateKey
	kid string
	ttl time.Duration
	now func() time.Time
}

// NewMinter returns a Minter signing with key. ttl is the life of each token: 0 means DefaultServiceTokenTTL, and
// it may not exceed MaxServiceTokenTTL.
func NewMinter(key ed25519.PrivateKey, ttl time.Duration) (*Minter, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("authn: minter needs an Ed25519 private key")
	}
	if ttl == 0 {
		ttl = DefaultServiceTokenTTL
	}
	if ttl < 0 || ttl > MaxServiceTokenTTL {
		return nil, fmt.Errorf("authn: service token ttl must be in (0, %s]", MaxServiceTokenTTL)
	}
	return &Minter{key: key, kid: KeyID(key.Public().(ed25519.PublicKey)), ttl: ttl, now: time.Now}, nil
}

// Mint returns a token that lets this process call service (a full service name such as
// "loom.memory.v1.MemoryService") on behalf of p. Send it as "Authorization: Bearer <token>".
func (m *Minter) Mint(p principal.Principal, service string) (string, error) {
	if p.Tenant == "" || p.Subject == "" {
		return "", fmt.Errorf("mint service token: %w: principal needs a tenant and a subject", ErrInvalidArgument)
	}
	if service == "" || strings.ContainsAny(service, "/ ") {
		return "", fmt.Errorf("mint service token: %w: service name", ErrInvalidArgument)
	}
	var roles []string
	if len(p.Roles) > 0 {
		var err error
		if roles, err = ValidateRoles(p.Roles); err != nil {
			return "", fmt.Errorf("mint service token: %w", err)
		}
	}
	var jti [16]byte
	rand.Read(jti[:])
	now := m.now()
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, serviceClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    ServiceIssuer,
			Subject:   p.Subject,
			Audience:  jwt.ClaimStrings{service},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(m.ttl)),
			ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Tenant: p.Tenant,
		Roles:  roles,
	})
	t.Header["kid"] = m.kid
	t.Header["typ"] = serviceTokenType
	s, err := t.SignedString(m.key)
	if err != nil {
		return "", fmt.Errorf("mint service token: %w", err)
	}
	return s, nil
}

// ServiceVerifier verifies service tokens addressed to the services this process serves. It is safe for
// concurrent use.
type ServiceVerifier struct {
	services []string
	keys     map[string]ed25519.PublicKey // by KeyID
	now      func() time.Time
}

// NewServiceVerifier returns a verifier that accepts tokens signed by any of keys (several during a key rotation)
// and addressed to one of services.
func NewServiceVerifier(services []string, keys ...ed25519.PublicKey) (*ServiceVerifier, error) {
	if len(services) == 0 || len(keys) == 0 {
		return nil, errors.New("authn: service verifier needs services and keys")
	}
	v := &ServiceVerifier{services: slices.Clone(services), keys: make(map[string]ed25519.PublicKey), now: time.Now}
	for _, s := range services {
		if s == "" || strings.ContainsAny(s, "/ ") {
			return nil, errors.New("authn: bad service name")
		}
	}
	for _, k := range keys {
		if len(k) != ed25519.PublicKeySize {
			return nil, errors.New("authn: service verifier needs Ed25519 public keys")
		}
		v.keys[KeyID(k)] = k
	}
	return v, nil
}

// Verify checks token for a call of procedure ("/pkg.Service/Method"): alg EdDSA with one of the verifier's keys,
// typ, iss "loom-internal", an exp no more than MaxServiceTokenTTL after iat, and an aud that is exactly the
// service named by procedure, which this process must serve. It returns the principal the call is made for.
func (v *ServiceVerifier) Verify(token, procedure string) (principal.Principal, error) {
	h, err := parseHeader(token)
	if err != nil {
		return principal.Principal{}, err
	}
	if h.alg != jwt.SigningMethodEdDSA.Alg() {
		return principal.Principal{}, errAlgorithm
	}
	if h.typ != serviceTokenType {
		return principal.Principal{}, errHeader
	}
	service, ok := serviceOf(procedure)
	if !ok || !slices.Contains(v.services, service) {
		return principal.Principal{}, errAudience
	}
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithIssuer(ServiceIssuer),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(serviceLeeway),
		jwt.WithTimeFunc(v.now),
	)
	var c serviceClaims
	if _, err := parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) {
		if !h.hasKID {
			if len(v.keys) != 1 {
				return nil, errNoKID
			}
			for _, k := range v.keys {
				return k, nil
			}
		}
		if k, ok := v.keys[h.kid]; ok {
			return k, nil
		}
		return nil, errUnknownKey
	}); err != nil {
		return principal.Principal{}, jwtReason(err)
	}
	if len(c.Audience) != 1 || c.Audience[0] != service {
		return principal.Principal{}, errAudience
	}
	if c.IssuedAt == nil || c.ExpiresAt.Sub(c.IssuedAt.Time) > MaxServiceTokenTTL {
		return principal.Principal{}, errClaims
	}
	if c.Tenant == "" || c.Subject == "" {
		return principal.Principal{}, errClaims
	}
	for _, r := range c.Roles {
		if !validRole(r) {
			return principal.Principal{}, errClaims
		}
	}
	return principal.Principal{Tenant: c.Tenant, Subject: c.Subject, Roles: c.Roles}, nil
}

// serviceOf returns "pkg.Service" from "/pkg.Service/Method".
func serviceOf(path string) (string, bool) {
	service, _, ok := procedure.Split(path)
	return service, ok
}

// ParsePrivateKeyPEM parses an Ed25519 private key from a PKCS #8 "PRIVATE KEY" PEM block (as written by
// `openssl genpkey -algorithm ed25519`).
func ParsePrivateKeyPEM(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("authn: no PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("authn: bad PKCS #8 private key")
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("authn: private key is not Ed25519")
	}
	return ek, nil
}

// PrivateKeyFromSeed returns the Ed25519 private key of a 32-byte seed given in standard or URL base64, padded or
// not (for a key passed through an environment variable).
func PrivateKeyFromSeed(b64 string) (ed25519.PrivateKey, error) {
	s := strings.TrimRight(strings.TrimSpace(b64), "=")
	seed, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		seed, err = base64.RawURLEncoding.DecodeString(s)
	}
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New("authn: seed must be 32 bytes in base64")
	}
	return ed25519.NewKeyFromSeed(seed), nil
}
