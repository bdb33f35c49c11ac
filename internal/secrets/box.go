// Package secrets keeps per-tenant secrets encrypted at rest: a Box seals values with AES-256-GCM under a master
// key, and ProviderKeys stores tenants' model, speech and video provider API keys sealed in a SQL database.
//
// A sealed value is bound to its tenant and provider (they are its additional authenticated data), so a value
// copied to another tenant's or provider's row does not open. It names the master key that sealed it, so master
// keys can rotate: a Box opens values sealed under its current key or any previous one, and seals under the
// current key only. Errors never contain a key or a plaintext.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the size of a master key in bytes (AES-256).
const KeySize = 32

// formatV1 is the first byte of every sealed value.
const formatV1 byte = 1

const (
	keyIDSize = 4
	nonceSize = 12
	// headerSize is the format byte and the key id; the header is authenticated with the value.
	headerSize = 1 + keyIDSize
)

// Errors of Box. Test them with errors.Is.
var (
	// ErrInvalidKey means a master key is not 32 bytes of standard or URL-safe base64.
	ErrInvalidKey = errors.New("invalid master key")
	// ErrUnknownKey means a value was sealed under a master key the Box does not hold (a wrong or retired
	// master key).
	ErrUnknownKey = errors.New("sealed under a master key that is not configured")
	// ErrDecrypt means a value failed authentication: it was altered, or belongs to another tenant or provider,
	// or the master key is wrong.
	ErrDecrypt = errors.New("cannot decrypt: authentication failed")
)

type masterKey struct {
	id   [keyIDSize]byte
	aead cipher.AEAD
}

// Box seals and opens values with AES-256-GCM under a current master key, and opens values sealed under previous
// master keys too. It is safe for concurrent use.
type Box struct {
	keys []masterKey // keys[0] is the current key
}

// DecodeKey decodes a base64 master key (standard or URL-safe alphabet, padded or not) of KeySize bytes. Its
// error never contains s.
func DecodeKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil {
			if len(k) != KeySize {
				return nil, fmt.Errorf("%w: want %d bytes, got %d", ErrInvalidKey, KeySize, len(k))
			}
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: not base64", ErrInvalidKey)
}

// NewBox returns a Box sealing under current and opening values sealed under current or any of previous. Every
// key must be KeySize bytes. The Box keeps no reference to the slices passed in.
func NewBox(current []byte, previous ...[]byte) (*Box, error) {
	b := &Box{}
	for i, k := range append([][]byte{current}, previous...) {
		if len(k) != KeySize {
			return nil, fmt.Errorf("new box: key %d: %w: want %d bytes, got %d", i, ErrInvalidKey, KeySize, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, fmt.Errorf("new box: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("new box: %w", err)
		}
		b.keys = append(b.keys, masterKey{id: keyID(k), aead: aead})
	}
	return b, nil
}

// keyID names a master key without revealing it: the first bytes of HMAC-SHA256 keyed by it.
func keyID(k []byte) [keyIDSize]byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte("loom secrets master key id"))
	var id [keyIDSize]byte
	copy(id[:], m.Sum(nil))
	return id
}

// KeyID returns the hex id of the current master key, which is safe to log.
func (b *Box) KeyID() string { return hex.EncodeToString(b.keys[0].id[:]) }

// Seal encrypts plaintext for tenant and provider under the current master key with a fresh random nonce. The
// result is: format byte 1, 4-byte key id, 12-byte nonce, ciphertext and 16-byte tag.
func (b *Box) Seal(tenant, provider string, plaintext []byte) []byte {
	k := b.keys[0]
	out := make([]byte, headerSize+nonceSize, headerSize+nonceSize+len(plaintext)+k.aead.Overhead())
	out[0] = formatV1
	copy(out[1:headerSize], k.id[:])
	rand.Read(out[headerSize:]) // crypto/rand.Read never fails (Go 1.24+)
	return k.aead.Seal(out, out[headerSize:], plaintext, aad(out[:headerSize], tenant, provider))
}

// Open decrypts a value sealed by Seal for the same tenant and provider, under the current or a previous master
// key. It fails with ErrUnknownKey when no configured master key sealed it, and ErrDecrypt when it does not
// authenticate.
func (b *Box) Open(tenant, provider string, sealed []byte) ([]byte, error) {
	if len(sealed) < headerSize+nonceSize || sealed[0] != formatV1 {
		return nil, fmt.Errorf("%w: malformed value", ErrDecrypt)
	}
	id := sealed[1:headerSize]
	tried := false
	for _, k := range b.keys {
		if !hmac.Equal(k.id[:], id) {
			continue
		}
		tried = true
		nonce, ct := sealed[headerSize:headerSize+nonceSize], sealed[headerSize+nonceSize:]
		if pt, err := k.aead.Open(nil, nonce, ct, aad(sealed[:headerSize], tenant, provider)); err == nil {
			return pt, nil
		}
	}
	if !tried {
		return nil, fmt.Errorf("%w (key id %s; configured: %s)", ErrUnknownKey, hex.EncodeToString(id), b.keyIDs())
	}
	return nil, ErrDecrypt
}

// Current reports whether sealed was sealed under the current master key.
func (b *Box) Current(sealed []byte) bool {
	return len(sealed) >= headerSize && hmac.Equal(sealed[1:headerSize], b.keys[0].id[:])
}

func (b *Box) keyIDs() string {
	ids := make([]string, len(b.keys))
	for i, k := range b.keys {
		ids[i] = hex.EncodeToString(k.id[:])
	}
	return strings.Join(ids, ",")
}

// aad binds a value to its header, tenant and provider; lengths are prefixed so no two pairs encode alike.
func aad(header []byte, tenant, provider string) []byte {
	out := append([]byte("loom/secrets/v1"), header...)
	out = binary.AppendUvarint(out, uint64(len(tenant)))
	out = append(out, tenant...)
	out = binary.AppendUvarint(out, uint64(len(provider)))
	return append(out, provider...)
}

// currentOnly returns a Box that opens only values sealed under b's current master key.
func (b *Box) currentOnly() (*Box, error) {
	if len(b.keys) == 0 {
		return nil, errors.New("box has no key")
	}
	return &Box{keys: b.keys[:1:1]}, nil
}
