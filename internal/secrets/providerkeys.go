package secrets

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/loom-dev/loom/internal/fault"
	"github.com/loom-dev/loom/internal/sqldb"
)

//go:embed migrations
var migrations embed.FS

// The providers a tenant may keep a key for.
const (
	ProviderGemini     = "gemini"
	ProviderOpenAI     = "openai"
	ProviderElevenLabs = "elevenlabs"
	ProviderTavus      = "tavus"
)

// Providers lists the provider names ProviderKeys accepts.
var Providers = []string{ProviderGemini, ProviderOpenAI, ProviderElevenLabs, ProviderTavus}

// Limits on what ProviderKeys stores.
const (
	MaxKeyBytes    = 4096
	maxTenantBytes = 256
)

// Errors of ProviderKeys, besides those of Box. Errors are wrapped with what was being attempted; test them with
// errors.Is.
var (
	// ErrNotFound means the tenant has no key for that provider.
	ErrNotFound = errors.New("provider key not found")
	// ErrInvalidArgument means an empty tenant, an unknown provider, or a key empty or over MaxKeyBytes.
	ErrInvalidArgument = fault.ErrInvalidArgument
)

// ProviderKey describes a stored provider key. It never holds the key.
type ProviderKey struct {
	// Provider is one of Providers.
	Provider string
	// UpdatedAt is when the key was last set.
	UpdatedAt time.Time
}

// ProviderKeys keeps tenants' provider API keys sealed by a Box in a SQL database (SQLite or Postgres). Only
// sealed values are stored. It is safe for concurrent use.
type ProviderKeys struct {
	db  *sqldb.DB
	box *Box
	now func() time.Time
}

// NewProviderKeys applies the store's migrations (component "secrets") to db and returns a store sealing with box.
func NewProviderKeys(ctx context.Context, db *sqldb.DB, box *Box) (*ProviderKeys, error) {
	if box == nil {
		return nil, errors.New("secrets provider keys: nil box")
	}
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("secrets provider keys: %w", err)
	}
	db = db.Component(sqldb.AdminComponent)
	if err := db.Migrate(ctx, "secrets", fsys, "secrets_provider_keys"); err != nil {
		return nil, fmt.Errorf("secrets provider keys: %w", err)
	}
	return &ProviderKeys{db: db, box: box, now: time.Now}, nil
}

func checkArgs(tenant, provider string) error {
	switch {
	case tenant == "" || len(tenant) > maxTenantBytes:
		return fmt.Errorf("%w: tenant", ErrInvalidArgument)
	case !slices.Contains(Providers, provider):
		return fmt.Errorf("%w: unknown provider %q", ErrInvalidArgument, provider)
	}
	return nil
}

// Set seals plaintext and stores it as tenant's key for provider, replacing any previous key.
func (s *ProviderKeys) Set(ctx context.Context, tenant, provider, plaintext string) (ProviderKey, error) {
	if err := checkArgs(tenant, provider); err != nil {
		return ProviderKey{}, fmt.Errorf("set provider key: %w", err)
	}
	if plaintext == "" || len(plaintext) > MaxKeyBytes {
		return ProviderKey{}, fmt.Errorf("set provider key: %w: key must be 1 to %d bytes", ErrInvalidArgument, MaxKeyBytes)
	}
	k := ProviderKey{Provider: provider, UpdatedAt: s.now().UTC().Truncate(time.Millisecond)}
	if err := s.put(ctx, tenant, provider, s.box.Seal(tenant, provider, []byte(plaintext)), k.UpdatedAt); err != nil {
		return ProviderKey{}, fmt.Errorf("set provider key: %w", err)
	}
	return k, nil
}

func (s *ProviderKeys) put(ctx context.Context, tenant, provider string, sealed []byte, at time.Time) error {
	_, err := s.db.ExecContext(ctx, s.db.Rebind(
		`INSERT INTO loom.secrets_provider_keys (tenant, provider, sealed, updated_at) VALUES (?, ?, ?, ?)
		 ON CONFLICT (tenant, provider) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at`),
		tenant, provider, sealed, at.UnixMilli())
	return err
}

// Delete deletes tenant's key for provider; ErrNotFound when there is none.
func (s *ProviderKeys) Delete(ctx context.Context, tenant, provider string) error {
	if err := checkArgs(tenant, provider); err != nil {
		return fmt.Errorf("delete provider key: %w", err)
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM loom.secrets_provider_keys WHERE tenant = ? AND provider = ?`), tenant, provider)
	if err != nil {
		return fmt.Errorf("delete provider key: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("delete provider key: %w", ErrNotFound)
	}
	return nil
}

// List returns which providers tenant has a key for, by provider name, without the keys.
func (s *ProviderKeys) List(ctx context.Context, tenant string) ([]ProviderKey, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(
		`SELECT provider, updated_at FROM loom.secrets_provider_keys WHERE tenant = ? ORDER BY provider`), tenant)
	if err != nil {
		return nil, fmt.Errorf("list provider keys: %w", err)
	}
	defer rows.Close()
	var out []ProviderKey
	for rows.Next() {
		var (
			k  ProviderKey
			ms int64
		)
		if err := rows.Scan(&k.Provider, &ms); err != nil {
			return nil, fmt.Errorf("list provider keys: %w", err)
		}
		k.UpdatedAt = time.UnixMilli(ms).UTC()
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list provider keys: %w", err)
	}
	return out, nil
}

// Get returns tenant's decrypted key for provider: ErrNotFound when there is none, ErrUnknownKey or ErrDecrypt
// when it cannot be opened. The error never contains the key.
func (s *ProviderKeys) Get(ctx context.Context, tenant, provider string) (string, error) {
	if err := checkArgs(tenant, provider); err != nil {
		return "", fmt.Errorf("get provider key: %w", err)
	}
	var sealed []byte
	err := s.db.QueryRowContext(ctx, s.db.Rebind(
		`SELECT sealed FROM loom.secrets_provider_keys WHERE tenant = ? AND provider = ?`), tenant, provider).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("get provider key: %w", ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("get provider key: %w", err)
	}
	pt, err := s.box.Open(tenant, provider, sealed)
	if err != nil {
		return "", fmt.Errorf("get provider key %s for tenant %q: %w", provider, tenant, err)
	}
	return string(pt), nil
}

// Check opens every stored key with the box's current master key alone, and returns how many it opened; the
// error names the first key that does not open. After [ProviderKeys.Reseal], it proves a retired master key can
// be dropped.
func (s *ProviderKeys) Check(ctx context.Context) (int, error) {
	current, err := s.box.currentOnly()
	if err != nil {
		return 0, err
	}
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(`SELECT tenant, provider, sealed FROM loom.secrets_provider_keys`))
	if err != nil {
		return 0, fmt.Errorf("check provider keys: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var tenant, provider string
		var sealed []byte
		if err := rows.Scan(&tenant, &provider, &sealed); err != nil {
			return n, fmt.Errorf("check provider keys: %w", err)
		}
		pt, err := current.Open(tenant, provider, sealed)
		if err != nil {
			return n, fmt.Errorf("check provider key %s for tenant %q: %w", provider, tenant, err)
		}
		clear(pt)
		n++
	}
	return n, rows.Err()
}

// Reseal re-encrypts, under the current master key, every stored key sealed under a previous one, and returns
// how many it rewrote; after it a retired master key can be dropped. It stops at the first key that does not
// open. Update times are kept.
func (s *ProviderKeys) Reseal(ctx context.Context) (int, error) {
	type row struct {
		tenant, provider string
		sealed           []byte
		at               int64
	}
	rows, err := s.db.QueryContext(ctx, s.db.Rebind(`SELECT tenant, provider, sealed, updated_at FROM loom.secrets_provider_keys`))
	if err != nil {
		return 0, fmt.Errorf("reseal provider keys: %w", err)
	}
	var stale []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.tenant, &r.provider, &r.sealed, &r.at); err != nil {
			rows.Close()
			return 0, fmt.Errorf("reseal provider keys: %w", err)
		}
		if !s.box.Current(r.sealed) {
			stale = append(stale, r)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("reseal provider keys: %w", err)
	}
	for i, r := range stale {
		pt, err := s.box.Open(r.tenant, r.provider, r.sealed)
		if err != nil {
			return i, fmt.Errorf("reseal provider key %s for tenant %q: %w", r.provider, r.tenant, err)
		}
		// Only rewrite the row if nobody set a new key meanwhile.
		_, err = s.db.ExecContext(ctx, s.db.Rebind(
			`UPDATE loom.secrets_provider_keys SET sealed = ? WHERE tenant = ? AND provider = ? AND sealed = ?`),
			s.box.Seal(r.tenant, r.provider, pt), r.tenant, r.provider, r.sealed)
		clear(pt)
		if err != nil {
			return i, fmt.Errorf("reseal provider keys: %w", err)
		}
	}
	return len(stale), nil
}
