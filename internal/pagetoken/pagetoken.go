// Package pagetoken makes the opaque page tokens of List RPCs: the last key of a page, as JSON, behind a kind
// prefix so a token of one listing is refused by another, base64url-encoded. Tokens are not secret: every query
// is tenant-scoped, so a forged token can only skip within the caller's own data.
package pagetoken

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
)

// ErrInvalid is returned for a token that was not made by [Encode] for the same kind.
var ErrInvalid = errors.New("invalid page token")

// Encode returns the token of kind carrying v, a value that marshals to JSON (a key, or a struct of keys).
func Encode(kind string, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic("pagetoken: " + err.Error()) // keys are strings and numbers; a failure is a programming error
	}
	return base64.RawURLEncoding.EncodeToString(append([]byte(kind+":"), b...))
}

// Decode parses tok, made by Encode for kind, into v. An empty token leaves v unchanged and is not an error.
func Decode(kind, tok string, v any) error {
	if tok == "" {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return ErrInvalid
	}
	body, ok := bytes.CutPrefix(raw, []byte(kind+":"))
	if !ok {
		return ErrInvalid
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil || dec.More() {
		return ErrInvalid
	}
	return nil
}
