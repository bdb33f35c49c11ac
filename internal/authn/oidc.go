package authn

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/loom-dev/loom/internal/principal"
)

// oidcAlgorithms are the algorithms an OIDC verifier may accept. HS* is absent on purpose: with a key set of
// public keys, HMAC only enables algorithm confusion. "none" is absent too.
var oidcAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// oidcVerifier verifies bearer tokens from an OpenID Connect provider against its JWKS.
type oidcVerifier struct {
	issuer, audience        string
	algs                    []string
	tenantClaim, rolesClaim string
	leeway                  time.Duration
	keys                    *keySet
	now                     func() time.Time
}

func (v *oidcVerifier) verify(ctx context.Context, token string) (principal.Principal, error) {
	h, err := parseHeader(token)
	if err != nil {
		return principal.Principal{}, err
	}
	if !slices.Contains(v.algs, h.alg) {
		return principal.Principal{}, errAlgorithm
	}
	parser := jwt.NewParser(
		jwt.WithValidMethods(v.algs),
		jwt.WithIssuer(v.issuer),
		jwt.WithAudience(v.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(v.leeway),
		jwt.WithTimeFunc(v.now),
	)
	claims := jwt.MapClaims{}
	if _, err := parser.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) {
		return v.key(ctx, h)
	}); err != nil {
		return principal.Principal{}, jwtReason(err)
	}

	sub, _ := claims["sub"].(string)
	tenant, _ := claims[v.tenantClaim].(string)
	if sub == "" || tenant == "" || len(tenant) > maxTenantLen {
		return principal.Principal{}, errClaims
	}
	// Roles the provider grants that Loom does not know are dropped, not fatal: providers carry other roles too.
	var roles []string
	switch rs := claims[v.rolesClaim].(type) {
	case []any:
		for _, r := range rs {
			if s, ok := r.(string); ok && validRole(s) && !slices.Contains(roles, s) {
				roles = append(roles, s)
			}
		}
	case string:
		for _, s := range strings.Fields(rs) {
			if validRole(s) && !slices.Contains(roles, s) {
				roles = append(roles, s)
			}
		}
	}
	slices.Sort(roles)
	return principal.Principal{Tenant: tenant, Subject: sub, Roles: roles}, nil
}

// key picks the one JWKS key that may verify a token with header h. An unknown kid reloads the set (rate-limited,
// see keySet.refresh) so a provider's key rotation is picked up.
func (v *oidcVerifier) key(ctx context.Context, h header) (any, error) {
	keys, err := v.keys.get(ctx)
	if err != nil {
		return nil, errKeyset
	}
	if !h.hasKID {
		if len(keys) != 1 {
			return nil, errNoKID
		}
		if !keys[0].compatible(h.alg) {
			return nil, errAlgorithm
		}
		return keys[0].key, nil
	}
	match := func(keys []jwk) []jwk {
		var out []jwk
		for _, k := range keys {
			if k.kid == h.kid {
				out = append(out, k)
			}
		}
		return out
	}
	found := match(keys)
	if len(found) == 0 && v.keys.refresh(ctx) {
		if keys, err = v.keys.get(ctx); err == nil {
			found = match(keys)
		}
	}
	if len(found) == 0 {
		return nil, errUnknownKey
	}
	for _, k := range found {
		if k.compatible(h.alg) {
			return k.key, nil
		}
	}
	return nil, errAlgorithm
}
