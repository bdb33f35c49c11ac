package secrets_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/loom-dev/loom/internal/secrets"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

func newKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, secrets.KeySize)
	rand.Read(k)
	return k
}

func newBox(t testing.TB, current []byte, previous ...[]byte) *secrets.Box {
	t.Helper()
	b, err := secrets.NewBox(current, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeKey(t *testing.T) {
	t.Parallel()
	k := newKey(t)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		got, err := secrets.DecodeKey(" " + enc.EncodeToString(k) + "\n")
		if err != nil || !bytes.Equal(got, k) {
			t.Errorf("DecodeKey = %x, %v", got, err)
		}
	}
	short := base64.StdEncoding.EncodeToString([]byte("hunter2-short-secret"))
	for _, in := range []string{"", "not base64 !!", short} {
		_, err := secrets.DecodeKey(in)
		if !errors.Is(err, secrets.ErrInvalidKey) {
			t.Errorf("DecodeKey(%q) = %v, want ErrInvalidKey", in, err)
		}
		if err != nil && in != "" && strings.Contains(err.Error(), in) {
			t.Errorf("error %q contains the input", err)
		}
	}
}

func TestBox(t *testing.T) {
	t.Parallel()
	oldKey, newKeyB := newKey(t), newKey(t)
	box := newBox(t, oldKey)
	plain := []byte("sk-very-secret")
	sealed := box.Seal("acme", "openai", plain)

	if bytes.Contains(sealed, plain) {
		t.Fatal("sealed value contains the plaintext")
	}
	if again := box.Seal("acme", "openai", plain); bytes.Equal(again, sealed) {
		t.Fatal("two seals of one value are equal: nonce reused")
	}
	if got, err := box.Open("acme", "openai", sealed); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	for _, c := range []struct{ name, tenant, provider string }{
		{"other tenant", "evil", "openai"},
		{"other provider", "acme", "gemini"},
		{"shifted boundary", "acmeo", "penai"},
	} {
		if _, err := box.Open(c.tenant, c.provider, sealed); !errors.Is(err, secrets.ErrDecrypt) {
			t.Errorf("%s: Open = %v, want ErrDecrypt", c.name, err)
		}
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	if _, err := box.Open("acme", "openai", tampered); !errors.Is(err, secrets.ErrDecrypt) {
		t.Errorf("tampered: Open = %v, want ErrDecrypt", err)
	}

	t.Run("wrong master key", func(t *testing.T) {
		_, err := newBox(t, newKeyB).Open("acme", "openai", sealed)
		if !errors.Is(err, secrets.ErrUnknownKey) {
			t.Fatalf("Open = %v, want ErrUnknownKey", err)
		}
		msg := err.Error()
		for _, secret := range []string{string(plain), string(oldKey), string(newKeyB),
			base64.StdEncoding.EncodeToString(oldKey), base64.StdEncoding.EncodeToString(newKeyB)} {
			if strings.Contains(msg, secret) {
				t.Errorf("error %q contains a secret", msg)
			}
		}
		if !strings.Contains(msg, "not configured") {
			t.Errorf("error %q does not say why", msg)
		}
	})
	t.Run("rotation", func(t *testing.T) {
		rotated := newBox(t, newKeyB, oldKey)
		if got, err := rotated.Open("acme", "openai", sealed); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("Open with the old key as previous = %q, %v", got, err)
		}
		if rotated.Current(sealed) || !rotated.Current(rotated.Seal("acme", "openai", plain)) {
			t.Error("Current does not tell the sealing key")
		}
		if rotated.KeyID() == box.KeyID() {
			t.Error("two master keys share an id")
		}
	})
	if _, err := secrets.NewBox(oldKey[:16]); !errors.Is(err, secrets.ErrInvalidKey) {
		t.Errorf("NewBox(16 bytes) = %v, want ErrInvalidKey", err)
	}
}

func TestProviderKeysSQLite(t *testing.T) {
	t.Parallel()
	runProviderKeys(t, sqldb.SQLite)
}

func TestProviderKeysPostgres(t *testing.T) {
	t.Parallel()
	runProviderKeys(t, sqldb.Postgres)
}

// runProviderKeys is the behaviour ProviderKeys shows on every dialect.
func runProviderKeys(t *testing.T, dialect sqldb.Dialect) {
	ctx := context.Background()
	db := sqldbtest.Open(t, dialect)
	oldKey := newKey(t)
	s, err := secrets.NewProviderKeys(ctx, db, newBox(t, oldKey))
	if err != nil {
		t.Fatal(err)
	}
	const acmeKey, globexKey = "sk-acme-0123456789", "sk-globex-9876543210"
	if _, err := s.Set(ctx, "acme", "openai", "sk-first"); err != nil {
		t.Fatal(err)
	}
	k, err := s.Set(ctx, "acme", "openai", acmeKey) // replaces
	if err != nil || k.Provider != "openai" || k.UpdatedAt.IsZero() {
		t.Fatalf("Set = %+v, %v", k, err)
	}
	if _, err := s.Set(ctx, "acme", "tavus", "tv-acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Set(ctx, "globex", "openai", globexKey); err != nil {
		t.Fatal(err)
	}

	if got, err := s.Get(ctx, "acme", "openai"); err != nil || got != acmeKey {
		t.Fatalf("Get = %q, %v", got, err)
	}
	if _, err := s.Get(ctx, "acme", "gemini"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("Get of a missing key = %v, want ErrNotFound", err)
	}
	list, err := s.List(ctx, "acme")
	if err != nil || len(list) != 2 || list[0].Provider != "openai" || list[1].Provider != "tavus" {
		t.Errorf("List = %+v, %v", list, err)
	}
	for _, c := range []struct{ tenant, provider, key string }{
		{"", "openai", "x"}, {"acme", "anthropic", "x"}, {"acme", "openai", ""},
		{"acme", "openai", strings.Repeat("x", secrets.MaxKeyBytes+1)},
	} {
		if _, err := s.Set(ctx, c.tenant, c.provider, c.key); !errors.Is(err, secrets.ErrInvalidArgument) {
			t.Errorf("Set(%q, %q) = %v, want ErrInvalidArgument", c.tenant, c.provider, err)
		}
	}

	t.Run("raw column holds no plaintext", func(t *testing.T) {
		rows, err := db.QueryContext(ctx, db.Component(sqldb.AdminComponent).Rebind(`SELECT tenant, provider, sealed FROM loom.secrets_provider_keys`))
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var tenant, provider string
			var sealed []byte
			if err := rows.Scan(&tenant, &provider, &sealed); err != nil {
				t.Fatal(err)
			}
			n++
			for _, plain := range []string{acmeKey, globexKey, "tv-acme", "sk-"} {
				if bytes.Contains(sealed, []byte(plain)) {
					t.Errorf("row %s/%s holds plaintext %q", tenant, provider, plain)
				}
			}
		}
		if n != 3 {
			t.Errorf("%d rows, want 3", n)
		}
	})

	t.Run("swapped ciphertext does not open", func(t *testing.T) {
		// Copy acme's sealed OpenAI key into globex's row, as an attacker with write access to the table could.
		_, err := db.ExecContext(ctx, db.Component(sqldb.AdminComponent).Rebind(`UPDATE loom.secrets_provider_keys SET sealed = (SELECT sealed FROM loom.secrets_provider_keys WHERE tenant = ? AND provider = ?) WHERE tenant = ? AND provider = ?`),
			"acme", "openai", "globex", "openai")
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, "globex", "openai")
		if !errors.Is(err, secrets.ErrDecrypt) || got != "" {
			t.Fatalf("Get of a swapped value = %q, %v; want ErrDecrypt", got, err)
		}
		if strings.Contains(err.Error(), acmeKey) {
			t.Errorf("error %q contains the key", err)
		}
		if _, err := s.Set(ctx, "globex", "openai", globexKey); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("wrong master key", func(t *testing.T) {
		wrong, err := secrets.NewProviderKeys(ctx, db, newBox(t, newKey(t)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = wrong.Get(ctx, "acme", "openai")
		if !errors.Is(err, secrets.ErrUnknownKey) {
			t.Fatalf("Get = %v, want ErrUnknownKey", err)
		}
		if strings.Contains(err.Error(), acmeKey) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(oldKey)) {
			t.Errorf("error %q contains a secret", err)
		}
	})

	t.Run("rotation", func(t *testing.T) {
		rotated, err := secrets.NewProviderKeys(ctx, db, newBox(t, newKey(t), oldKey))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := rotated.Get(ctx, "acme", "openai"); err != nil || got != acmeKey {
			t.Fatalf("Get after rotation = %q, %v", got, err)
		}
		n, err := rotated.Reseal(ctx)
		if err != nil || n != 3 {
			t.Fatalf("Reseal = %d, %v; want 3", n, err)
		}
		if n, err := rotated.Reseal(ctx); err != nil || n != 0 {
			t.Fatalf("second Reseal = %d, %v; want 0", n, err)
		}
		if _, err := s.Get(ctx, "acme", "openai"); !errors.Is(err, secrets.ErrUnknownKey) {
			t.Errorf("old-key-only store after Reseal: Get = %v, want ErrUnknownKey", err)
		}
		if got, err := rotated.Get(ctx, "globex", "openai"); err != nil || got != globexKey {
			t.Errorf("Get after Reseal = %q, %v", got, err)
		}
	})

	if err := s.Delete(ctx, "globex", "openai"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "globex", "openai"); !errors.Is(err, secrets.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if list, err := s.List(ctx, "globex"); err != nil || len(list) != 0 {
		t.Errorf("List after Delete = %+v, %v", list, err)
	}
}
