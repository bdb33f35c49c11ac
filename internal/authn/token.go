package authn

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// reason is why a credential was refused. Its text is fixed by this package and never holds any part of the
// credential, so it is safe to log; clients only ever see ErrInvalidCredentials.
type reason string

func (r reason) Error() string { return string(r) }

const (
	errMalformed   reason = "malformed credential"
	errHeader      reason = "forbidden or unknown token header"
	errAlgorithm   reason = "algorithm not allowed for this key"
	errNoKID       reason = "token names no key id and the key set has several keys"
	errUnknownKey  reason = "unknown key"
	errKeyset      reason = "key set unavailable"
	errSignature   reason = "bad signature or secret"
	errExpired     reason = "expired"
	errNotYetValid reason = "not yet valid"
	errIssuer      reason = "wrong issuer"
	errAudience    reason = "wrong audience"
	errClaims      reason = "missing or invalid claims"
	errRevoked     reason = "revoked"
	errDisabled    reason = "credential type not enabled"
	errAmbiguous   reason = "several credentials"
	errNoCreds     reason = "no credentials"
	errLocalOnly   reason = "service token carries the local development principal, which --auth required does not grant"
	errClientCert  reason = "service token without a verified client certificate (mutual TLS is required)"
)

// maxTokenLen bounds the tokens we parse at all; real ones are a few KiB at most.
const maxTokenLen = 16 << 10

// header is the part of a JOSE header we act on.
type header struct {
	alg    string
	kid    string
	typ    string
	hasKID bool
}

// parseHeader decodes and screens a compact JWS header before any key is looked up (RFC 8725):
//   - jku, x5u, jwk and x5c are refused: keys are never taken from, or fetched at the direction of, the token;
//   - crit is refused: this package understands no extension, so every critical one is unknown (RFC 7515 4.1.11);
//   - alg, kid and typ must be strings.
func parseHeader(token string) (header, error) {
	if len(token) > maxTokenLen || strings.Count(token, ".") != 2 {
		return header{}, errMalformed
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(token[:strings.IndexByte(token, '.')])
	if err != nil {
		return header{}, errMalformed
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return header{}, errMalformed
	}
	for _, name := range []string{"jku", "x5u", "jwk", "x5c", "crit"} {
		if _, ok := fields[name]; ok {
			return header{}, errHeader
		}
	}
	var h header
	str := func(name string, dst *string) (bool, error) {
		v, ok := fields[name]
		if !ok {
			return false, nil
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return true, errMalformed
		}
		return true, nil
	}
	if ok, err := str("alg", &h.alg); err != nil || !ok || h.alg == "" {
		return header{}, errMalformed
	}
	if h.hasKID, err = str("kid", &h.kid); err != nil {
		return header{}, err
	}
	if _, err := str("typ", &h.typ); err != nil {
		return header{}, err
	}
	return h, nil
}

// peekIssuer returns the unverified iss of a JWT, only to choose which verifier judges it. Each verifier pins
// its own keys and algorithms, so a forged iss gains nothing.
func peekIssuer(token string) (string, error) {
	parts := strings.Split(token, ".")
	if len(token) > maxTokenLen || len(parts) != 3 {
		return "", errMalformed
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return "", errMalformed
	}
	var c struct {
		Iss any `json:"iss"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", errMalformed
	}
	iss, _ := c.Iss.(string)
	return iss, nil
}

// jwtReason turns an error from jwt.Parser into a reason, so that no library text (which may echo header values)
// reaches a log or a client.
func jwtReason(err error) error {
	var r reason
	switch {
	case errors.As(err, &r):
		return r
	case errors.Is(err, jwt.ErrTokenExpired):
		return errExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return errNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return errIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return errAudience
	case errors.Is(err, jwt.ErrTokenMalformed):
		return errMalformed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return errSignature
	default:
		return errClaims
	}
}
