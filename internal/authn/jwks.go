package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	maxJWKSBytes       = 1 << 20
	maxDiscoveryBytes  = 64 << 10
	minRSABits         = 2048
	refetchMinPeriod   = 30 * time.Second
	defaultJWKSMaxAge  = time.Hour
	failedFetchBackoff = 5 * time.Second
)

// jwk is one verification key of a key set.
type jwk struct {
	kid string
	kty string // "RSA" or "EC"
	alg string // the key's own "alg", if it names one
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// compatible reports whether k may verify a token signed with alg: the key type (and curve) must be the one the
// algorithm is defined for (RFC 8725 section 3.1), and a key that names its algorithm is used only with it.
func (k jwk) compatible(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		_, ok := k.key.(*rsa.PublicKey)
		return ok && k.kty == "RSA"
	case "ES256", "ES384", "ES512":
		pub, ok := k.key.(*ecdsa.PublicKey)
		return ok && k.kty == "EC" && pub.Curve == curveForAlg(alg)
	}
	return false
}

func curveForAlg(alg string) elliptic.Curve {
	switch alg {
	case "ES256":
		return elliptic.P256()
	case "ES384":
		return elliptic.P384()
	case "ES512":
		return elliptic.P521()
	}
	return nil
}

// parseJWKS decodes a JSON Web Key Set. Keys that are not signature keys of a supported type are skipped; a
// supported key that is malformed fails the whole set.
func parseJWKS(data []byte) ([]jwk, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			Alg string `json:"alg"`
			N   string `json:"n"`
			E   string `json:"e"`
			Crv string `json:"crv"`
			X   string `json:"x"`
			Y   string `json:"y"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("decode jwks: %w", err)
	}
	var keys []jwk
	for i, raw := range set.Keys {
		if raw.Use != "" && raw.Use != "sig" {
			continue
		}
		k := jwk{kid: raw.Kid, kty: raw.Kty, alg: raw.Alg}
		switch raw.Kty {
		case "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(raw.N)
			e, err2 := base64.RawURLEncoding.DecodeString(raw.E)
			if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("jwks key %d: bad RSA parameters", i)
			}
			pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if pub.N.BitLen() < minRSABits || pub.E < 3 || pub.E%2 == 0 {
				return nil, fmt.Errorf("jwks key %d: weak RSA key", i)
			}
			k.key = pub
		case "EC":
			var curve elliptic.Curve
			switch raw.Crv {
			case "P-256":
				curve = elliptic.P256()
			case "P-384":
				curve = elliptic.P384()
			case "P-521":
				curve = elliptic.P521()
			default:
				continue
			}
			size := (curve.Params().BitSize + 7) / 8
			x, err1 := base64.RawURLEncoding.DecodeString(raw.X)
			y, err2 := base64.RawURLEncoding.DecodeString(raw.Y)
			if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
				return nil, fmt.Errorf("jwks key %d: bad EC parameters", i)
			}
			// ParseUncompressedPublicKey rejects points that are not on the curve (invalid-curve attacks).
			pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
			if err != nil {
				return nil, fmt.Errorf("jwks key %d: bad EC point", i)
			}
			k.key = pub
		default:
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("jwks holds no usable signature key")
	}
	return keys, nil
}

// keySet loads a JWKS from a file or URL and caches it. It is safe for concurrent use.
type keySet struct {
	file string
	url  string // empty: discovered from issuer
	// issuer is the OIDC issuer whose discovery document names the key set's URL when url is empty.
	issuer  string
	client  *http.Client
	timeout time.Duration
	maxAge  time.Duration
	now     func() time.Time

	fetchMu sync.Mutex // serialises loads

	mu        sync.Mutex
	keys      []jwk
	loadedAt  time.Time
	lastFetch time.Time // last load attempt, successful or not
	lastErr   error     // error of the last load attempt

	discovered string // the jwks_uri of the issuer's discovery document; guarded by fetchMu
}

// get returns the cached keys, loading them on first use or when older than maxAge. A failed refresh keeps the
// keys already held.
func (s *keySet) get(ctx context.Context) ([]jwk, error) {
	s.mu.Lock()
	keys, loadedAt := s.keys, s.loadedAt
	s.mu.Unlock()
	if keys != nil && s.now().Sub(loadedAt) < s.maxAge {
		return keys, nil
	}
	if err := s.load(ctx, loadedAt); err != nil && keys == nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys, nil
}

// refresh reloads the set after a token named an unknown kid, at most once per refetchMinPeriod, so tokens with
// random kids cannot make the server hammer the key endpoint. It reports whether a reload happened.
func (s *keySet) refresh(ctx context.Context) bool {
	s.mu.Lock()
	recent := !s.lastFetch.IsZero() && s.now().Sub(s.lastFetch) < refetchMinPeriod
	loadedAt := s.loadedAt
	s.mu.Unlock()
	if recent {
		return false
	}
	return s.load(ctx, loadedAt) == nil
}

// load fetches the set unless another caller already replaced the one loaded at seen.
func (s *keySet) load(ctx context.Context, seen time.Time) error {
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	s.mu.Lock()
	if !s.loadedAt.Equal(seen) {
		s.mu.Unlock()
		return nil // someone else loaded while we waited
	}
	if s.lastErr != nil && s.now().Sub(s.lastFetch) < failedFetchBackoff {
		err := s.lastErr
		s.mu.Unlock()
		return err // an unreachable key endpoint is not retried on every request
	}
	s.lastFetch = s.now()
	s.mu.Unlock()

	data, err := s.read(ctx)
	var keys []jwk
	if err == nil {
		keys, err = parseJWKS(data)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err != nil {
		return err
	}
	s.keys, s.loadedAt = keys, s.now()
	return nil
}

func (s *keySet) read(ctx context.Context) ([]byte, error) {
	if s.file != "" {
		data, err := os.ReadFile(s.file)
		if err != nil {
			return nil, fmt.Errorf("read jwks: %w", err)
		}
		return data, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
	defer cancel()
	u := s.url
	if u == "" {
		var err error
		if u, err = s.discover(ctx); err != nil {
			return nil, err
		}
	}
	data, err := s.fetch(ctx, u, maxJWKSBytes)
	if err != nil {
		if s.url == "" {
			s.discovered = "" // the provider may have moved its key set: discover again next time
		}
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	return data, nil
}

// discover returns the jwks_uri of the issuer's OpenID Connect discovery document, fetched once and kept until
// a fetch of the key set fails. The document's issuer must be the configured one exactly (OpenID Connect
// Discovery 1.0, section 4.3), and its jwks_uri must pass the same checks as a configured JWKS URL.
func (s *keySet) discover(ctx context.Context) (string, error) {
	if s.discovered != "" {
		return s.discovered, nil
	}
	data, err := s.fetch(ctx, strings.TrimSuffix(s.issuer, "/")+"/.well-known/openid-configuration", maxDiscoveryBytes)
	if err != nil {
		return "", fmt.Errorf("oidc discovery: %w", err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return "", errors.New("oidc discovery: document is not JSON")
	}
	if doc.Issuer != s.issuer {
		return "", fmt.Errorf("oidc discovery: document names issuer %q, want %q", doc.Issuer, s.issuer)
	}
	if err := checkJWKSURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("oidc discovery: jwks_uri: %w", err)
	}
	s.discovered = doc.JWKSURI
	return doc.JWKSURI, nil
}

// fetch GETs u as JSON, reading at most limit bytes.
func (s *keySet) fetch(ctx context.Context, u string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errors.New("response too large")
	}
	return data, nil
}
