package authn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func newKeyStore(t testing.TB, dialect sqldb.Dialect) *KeyStore {
	t.Helper()
	s, err := NewKeyStore(context.Background(), sqldbtest.Open(t, dialect))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKeyStoreSQLite(t *testing.T) {
	t.Parallel()
	runKeyStoreContract(t, func(t *testing.T) *KeyStore { return newKeyStore(t, sqldb.SQLite) })
}

func TestKeyStorePostgres(t *testing.T) {
	t.Parallel()
	runKeyStoreContract(t, func(t *testing.T) *KeyStore { return newKeyStore(t, sqldb.Postgres) })
}

// runKeyStoreContract is the behaviour every KeyStore backend must show.
func runKeyStoreContract(t *testing.T, newStore func(t *testing.T) *KeyStore) {
	ctx := context.Background()
	s := newStore(t)
	clock := &fakeClock{t: time.Now()}
	s.now = clock.now

	plain, k, err := s.Create(ctx, "acme", "ci", []string{"writer", "reader", "writer"}, time.Time{})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if id, ok := parseAPIKey(plain); !ok || id != k.ID {
		t.Fatalf("plaintext %q is not loom_<id>_<secret> for id %q", plain, k.ID)
	}
	if !slices.Equal(k.Roles, []string{"reader", "writer"}) {
		t.Fatalf("roles = %v, want sorted and deduplicated", k.Roles)
	}

	t.Run("verify", func(t *testing.T) {
		got, err := s.Verify(ctx, plain)
		if err != nil || got.ID != k.ID || got.Tenant != "acme" {
			t.Fatalf("Verify = %+v, %v", got, err)
		}
	})
	t.Run("lookup", func(t *testing.T) {
		got, err := s.Lookup(ctx, k.ID)
		if err != nil || got.Name != "ci" || !got.CreatedAt.Equal(k.CreatedAt) || !got.ExpiresAt.IsZero() {
			t.Fatalf("Lookup = %+v, %v; want %+v", got, err, k)
		}
		if _, err := s.Lookup(ctx, "aaaaaaaaaaaaaaaa"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Lookup unknown: err = %v, want ErrNotFound", err)
		}
	})
	t.Run("invalid arguments", func(t *testing.T) {
		for name, tc := range map[string]struct {
			tenant, name string
			roles        []string
			expires      time.Time
			want         error
		}{
			"unknown role":   {"acme", "x", []string{"root"}, time.Time{}, ErrInvalidRole},
			"no roles":       {"acme", "x", nil, time.Time{}, ErrInvalidRole},
			"no tenant":      {"", "x", []string{"reader"}, time.Time{}, ErrInvalidArgument},
			"no name":        {"acme", "", []string{"reader"}, time.Time{}, ErrInvalidArgument},
			"expiry in past": {"acme", "x", []string{"reader"}, clock.now().Add(-time.Second), ErrInvalidArgument},
		} {
			if _, _, err := s.Create(ctx, tc.tenant, tc.name, tc.roles, tc.expires); !errors.Is(err, tc.want) {
				t.Errorf("%s: err = %v, want %v", name, err, tc.want)
			}
		}
	})

	other, ok2, err := s.Create(ctx, "globex", "deploy", []string{"admin"}, clock.now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("list is per tenant and holds no secrets", func(t *testing.T) {
		keys, err := s.List(ctx, "acme")
		if err != nil || len(keys) != 1 || keys[0].ID != k.ID {
			t.Fatalf("List(acme) = %+v, %v", keys, err)
		}
		dump := fmt.Sprintf("%#v", keys)
		if strings.Contains(dump, plain[len(APIKeyPrefix)+keyIDLen+1:]) {
			t.Fatal("List returned the secret")
		}
		keys, _ = s.List(ctx, "globex")
		if len(keys) != 1 || keys[0].ID != ok2.ID || !keys[0].ExpiresAt.Equal(ok2.ExpiresAt) {
			t.Fatalf("List(globex) = %+v", keys)
		}
	})
	t.Run("revoke of another tenant's key is NotFound", func(t *testing.T) {
		if err := s.Revoke(ctx, "acme", ok2.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
		if _, err := s.Verify(ctx, other); err != nil {
			t.Fatalf("key revoked by another tenant: %v", err)
		}
		if err := s.Revoke(ctx, "acme", "nonexistentkeyid"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown id: err = %v, want ErrNotFound", err)
		}
	})
	t.Run("failures", func(t *testing.T) {
		wrongSecret := plain[:len(plain)-4] + "aaaa"
		if wrongSecret == plain {
			wrongSecret = plain[:len(plain)-4] + "bbbb"
		}
		unknownID := APIKeyPrefix + "zzzzzzzzzzzzzzzz" + plain[len(APIKeyPrefix)+keyIDLen:]
		for name, tc := range map[string]struct {
			key  string
			want error
		}{
			"empty":         {"", errMalformed},
			"no prefix":     {plain[len(APIKeyPrefix):], errMalformed},
			"truncated":     {plain[:len(plain)-1], errMalformed},
			"uppercase":     {strings.ToUpper(plain), errMalformed},
			"bad separator": {strings.Replace(plain, "_", "-", 2), errMalformed},
			"unknown id":    {unknownID, errUnknownKey},
			"wrong secret":  {wrongSecret, errSignature},
		} {
			if _, err := s.Verify(ctx, tc.key); !errors.Is(err, tc.want) {
				t.Errorf("%s: err = %v, want %v", name, err, tc.want)
			}
		}
	})
	t.Run("expired", func(t *testing.T) {
		clock.add(2 * time.Hour)
		defer clock.add(-2 * time.Hour)
		if _, err := s.Verify(ctx, other); !errors.Is(err, errExpired) {
			t.Fatalf("err = %v, want errExpired", err)
		}
	})
	t.Run("revoked", func(t *testing.T) {
		if err := s.Revoke(ctx, "acme", k.ID); err != nil {
			t.Fatalf("Revoke: %v", err)
		}
		if err := s.Revoke(ctx, "acme", k.ID); err != nil {
			t.Fatalf("second Revoke: %v", err)
		}
		if _, err := s.Verify(ctx, plain); !errors.Is(err, errRevoked) {
			t.Fatalf("err = %v, want errRevoked", err)
		}
		got, _ := s.Lookup(ctx, k.ID)
		if got.RevokedAt.IsZero() {
			t.Fatal("Lookup: RevokedAt not set")
		}
	})
}
