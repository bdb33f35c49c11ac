package authn

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"embed"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/sqldb"
)

//go:embed migrations
var migrations embed.FS

// Sentinel errors of the key store. Errors are wrapped with what was being attempted; test them with errors.Is.
var (
	// ErrNotFound means no key with that id exists (for that tenant).
	ErrNotFound = errors.New("api key not found")
	// ErrInvalidRole means a role is not one of "reader", "writer", "admin".
	ErrInvalidRole = errors.New("invalid role")
	// ErrInvalidArgument means a tenant, name or expiry is missing or out of range.
	ErrInvalidArgument = fault.ErrInvalidArgument
)

// The roles a principal may hold.
const (
	RoleReader = "reader"
	RoleWriter = "writer"
	RoleAdmin  = "admin"
)

// APIKeyPrefix starts every API key: "loom_<id>_<secret>".
const APIKeyPrefix = "loom_"

const (
	keyIDBytes     = 10 // 16 base32 characters
	keySecretBytes = 32 // 52 base32 characters, 256 bits
	maxNameLen     = 200
	maxTenantLen   = 256
)

// keyEncoding is lowercase RFC 4648 base32 without padding: no '_' so the key splits unambiguously, and no
// characters that need escaping in headers or shells.
var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

var (
	keyIDLen     = keyEncoding.EncodedLen(keyIDBytes)
	keySecretLen = keyEncoding.EncodedLen(keySecretBytes)
)

// Key describes an API key. It never holds the secret or its hash.
type Key struct {
	// ID is the public part of the key, unique across tenants; it is the principal's Subject as "apikey:<ID>".
	ID     string
	Tenant string
	Name   string
	Roles  []string
	// CreatedAt is when the key was created.
	CreatedAt time.Time
	// ExpiresAt is when the key stops working; zero means it never expires.
	ExpiresAt time.Time
	// RevokedAt is when the key was revoked; zero means it is not revoked.
	RevokedAt time.Time
}

// KeyStore keeps API keys in a SQL database (SQLite or Postgres). It is safe for concurrent use.
//
// Only SHA-256 of each key is stored. A fast unsalted hash is right here, unlike for passwords: every key carries
// 256 random bits, so no dictionary or brute-force attack on a leaked hash is feasible, and a slow KDF would only
// make every request slower.
type KeyStore struct {
	db  *sqldb.DB
	now func() time.Time
}

// NewKeyStore applies the key store's migrations to db and returns a store over it.
func NewKeyStore(ctx context.Context, db *sqldb.DB) (*KeyStore, error) {
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("authn key store: %w", err)
	}
	db = db.Component(sqldb.AdminComponent)
	if err := db.Migrate(ctx, "authn", fsys, "authn_api_keys"); err != nil {
		return nil, fmt.Errorf("authn key store: %w", err)
	}
	return &KeyStore{db: db, now: time.Now}, nil
}

// ValidateRoles checks that roles is non-empty and holds only "reader", "writer" and "admin", and returns them
// sorted without duplicates.
func ValidateRoles(roles []string) ([]string, error) {
	if len(roles) == 0 {
		return nil, fmt.Errorf("%w: no roles", ErrInvalidRole)
	}
	out := make([]string, 0, len(roles))
	for _, r := range roles {
		if !validRole(r) {
			return nil, ErrInvalidRole
		}
		out = append(out, r)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func validRole(r string) bool { return r == RoleReader || r == RoleWriter || r == RoleAdmin }

// Create makes a key for tenant and returns its plaintext, which is shown once and never stored. A zero expires
// means the key never expires; otherwise expires must be in the future.
func (s *KeyStore) Create(ctx context.Context, tenant, name string, roles []string, expires time.Time) (string, Key, error) {
	now := s.now().UTC().Truncate(time.Millisecond)
	switch {
	case tenant == "" || len(tenant) > maxTenantLen:
		return "", Key{}, fmt.Errorf("create api key: %w: tenant", ErrInvalidArgument)
	case name == "" || len(name) > maxNameLen:
		return "", Key{}, fmt.Errorf("create api key: %w: name", ErrInvalidArgument)
	case !expires.IsZero() && !expires.After(now):
		return "", Key{}, fmt.Errorf("create api key: %w: expiry in the past", ErrInvalidArgument)
	}
	roles, err := ValidateRoles(roles)
	if err != nil {
		return "", Key{}, fmt.Errorf("create api key: %w", err)
	}
	var idb [keyIDBytes]byte
	var secret [keySecretBytes]byte
	rand.Read(idb[:]) // crypto/rand.Read never fails (Go 1.24+)
	rand.Read(secret[:])
	id := keyEncoding.EncodeToString(idb[:])
	plaintext := APIKeyPrefix + id + "_" + keyEncoding.EncodeToString(secret[:])
	hash := sha256.Sum256([]byte(plaintext))

	k := Key{ID: id, Tenant: tenant, Name: name, Roles: roles, CreatedAt: now}
	if !expires.IsZero() {
		k.ExpiresAt = expires.UTC().Truncate(time.Millisecond)
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind(
		`INSERT INTO loom.authn_api_keys (id, tenant, name, roles, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)`),
		k.ID, k.Tenant, k.Name, strings.Join(k.Roles, " "), hash[:], k.CreatedAt.UnixMilli(), toMillis(k.ExpiresAt))
	if err != nil {
		return "", Key{}, fmt.Errorf("create api key: %w", err)
	}
	return plaintext, k, nil
}

// List returns tenant's keys, revoked and expired ones included, oldest first.
func (s *KeyStore) List(ctx context.Context, tenant string) ([]Key, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(
		`SELECT id, tenant, name, roles, created_at, expires_at, revoked_at FROM loom.authn_api_keys WHERE tenant = ? ORDER BY created_at, id`),
		tenant)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		k, _, err := scanKey(rows, false)
		if err != nil {
			return nil, fmt.Errorf("list api keys: %w", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return keys, nil
}

// Revoke revokes tenant's key id. Revoking a revoked key succeeds; a key of another tenant is ErrNotFound.
func (s *KeyStore) Revoke(ctx context.Context, tenant, id string) error {
	res, err := s.db.ExecContext(ctx, s.db.Rebind(
		`UPDATE loom.authn_api_keys SET revoked_at = ? WHERE id = ? AND tenant = ? AND revoked_at IS NULL`),
		s.now().UTC().UnixMilli(), id, tenant)
	if err != nil {
		return fmt.Errorf("revoke api key: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 1 {
		return nil
	}
	var one int
	err = s.db.QueryRowContext(ctx, s.db.Rebind(`SELECT 1 FROM loom.authn_api_keys WHERE id = ? AND tenant = ?`), id, tenant).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("revoke api key: %w", ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("revoke api key: %w", err)
	}
	return nil
}

// Lookup returns the key with id, whatever its tenant or state.
func (s *KeyStore) Lookup(ctx context.Context, id string) (Key, error) {
	k, _, err := s.lookup(ctx, id)
	if err != nil {
		return Key{}, fmt.Errorf("lookup api key: %w", err)
	}
	return k, nil
}

func (s *KeyStore) lookup(ctx context.Context, id string) (Key, []byte, error) {
	row := s.db.QueryRowContext(ctx, s.db.Rebind(
		`SELECT id, tenant, name, roles, created_at, expires_at, revoked_at, secret_hash FROM loom.authn_api_keys WHERE id = ?`), id)
	k, hash, err := scanKey(row, true)
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, nil, ErrNotFound
	}
	return k, hash, err
}

// Verify checks a plaintext key and returns it if it is well formed, known, matches the stored hash (compared in
// constant time), and is neither revoked nor expired. Its errors never contain the plaintext.
func (s *KeyStore) Verify(ctx context.Context, plaintext string) (Key, error) {
	id, ok := parseAPIKey(plaintext)
	if !ok {
		return Key{}, errMalformed
	}
	k, stored, err := s.lookup(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Key{}, errUnknownKey
	}
	if err != nil {
		return Key{}, fmt.Errorf("verify api key: %w", err)
	}
	hash := sha256.Sum256([]byte(plaintext))
	if subtle.ConstantTimeCompare(hash[:], stored) != 1 {
		return Key{}, errSignature
	}
	now := s.now()
	if !k.RevokedAt.IsZero() {
		return Key{}, errRevoked
	}
	if !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt) {
		return Key{}, errExpired
	}
	return k, nil
}

// parseAPIKey returns the id of a key shaped "loom_<16 base32>_<52 base32>".
func parseAPIKey(s string) (id string, ok bool) {
	rest, ok := strings.CutPrefix(s, APIKeyPrefix)
	if !ok || len(rest) != keyIDLen+1+keySecretLen || rest[keyIDLen] != '_' {
		return "", false
	}
	id, secret := rest[:keyIDLen], rest[keyIDLen+1:]
	if !isBase32(id) || !isBase32(secret) {
		return "", false
	}
	return id, true
}

func isBase32(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

type scanner interface{ Scan(dest ...any) error }

func scanKey(sc scanner, withHash bool) (Key, []byte, error) {
	var (
		k                Key
		roles            string
		created          int64
		expires, revoked sql.NullInt64
		hash             []byte
		dest             = []any{&k.ID, &k.Tenant, &k.Name, &roles, &created, &expires, &revoked}
	)
	if withHash {
		dest = append(dest, &hash)
	}
	if err := sc.Scan(dest...); err != nil {
		return Key{}, nil, err
	}
	k.Roles = strings.Fields(roles)
	k.CreatedAt = time.UnixMilli(created).UTC()
	k.ExpiresAt = fromMillis(expires)
	k.RevokedAt = fromMillis(revoked)
	return k, hash, nil
}

func toMillis(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMilli(), Valid: true}
}

func fromMillis(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64).UTC()
}
