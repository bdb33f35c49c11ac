package admin_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/loom-dev/loom/admin"
	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
	"github.com/loom-dev/loom/internal/audit/auditsql"
	"github.com/loom-dev/loom/internal/authn"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/rpcserver"
	"github.com/loom-dev/loom/internal/rpcserver/rpcservertest"
	"github.com/loom-dev/loom/internal/secrets"
	"github.com/loom-dev/loom/internal/sqldb"
	"github.com/loom-dev/loom/internal/sqldb/sqldbtest"
)

// openStores opens a fresh SQLite database with the API key store and the audit trail on it.
func openStores(t *testing.T) (*sqldb.DB, *authn.KeyStore, *auditsql.Store) {
	t.Helper()
	db := sqldbtest.Open(t, sqldb.SQLite)
	keys, err := authn.NewKeyStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	trail, err := auditsql.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return db, keys, trail
}

// newClient serves an admin server over a fresh SQLite database and returns a grpc-go client and the provider
// key store behind it (nil when withMasterKey is false).
func newClient(t *testing.T, withMasterKey bool) (adminv1.AdminServiceClient, *secrets.ProviderKeys) {
	t.Helper()
	ctx := context.Background()
	db, keys, trail := openStores(t)
	var providers *secrets.ProviderKeys
	if withMasterKey {
		mk := make([]byte, secrets.KeySize)
		rand.Read(mk)
		box, err := secrets.NewBox(mk)
		if err != nil {
			t.Fatal(err)
		}
		if providers, err = secrets.NewProviderKeys(ctx, db, box); err != nil {
			t.Fatal(err)
		}
	}
	svc := admin.New(slog.New(slog.NewTextHandler(io.Discard, nil)), keys, trail, providers, authn.ModeRequired)
	srv := rpcservertest.Start(t, rpcserver.Config{}, rpcservertest.TenantAuthenticator, svc.Service())
	return adminv1.NewAdminServiceClient(srv.GRPCConn(t)), providers
}

// as returns a context whose calls run as tenant, bounded by the test.
func as(t *testing.T, tenant string) context.Context {
	return metadata.AppendToOutgoingContext(t.Context(), rpcservertest.TenantHeader, tenant)
}

func TestProviderKeys(t *testing.T) {
	t.Parallel()
	c, store := newClient(t, true)
	const secret = "sk-acme-do-not-leak-0123456789"

	res, err := c.SetProviderKey(as(t, "acme"), &adminv1.SetProviderKeyRequest{Provider: "openai", Key: secret})
	if err != nil {
		t.Fatalf("SetProviderKey: %v", err)
	}
	if res.GetProviderKey().GetProvider() != "openai" || res.GetProviderKey().GetUpdateTime() == nil {
		t.Errorf("SetProviderKey = %v", res)
	}
	if strings.Contains(protojson.Format(res), secret) {
		t.Errorf("SetProviderKey response carries the key: %v", res)
	}
	if _, err := c.SetProviderKey(as(t, "acme"), &adminv1.SetProviderKeyRequest{Provider: "tavus", Key: "tv-1"}); err != nil {
		t.Fatal(err)
	}

	list, err := c.ListProviderKeys(as(t, "acme"), &adminv1.ListProviderKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := list.GetProviderKeys(); len(got) != 2 || got[0].GetProvider() != "openai" || got[1].GetProvider() != "tavus" {
		t.Errorf("ListProviderKeys = %v", list)
	}
	if strings.Contains(protojson.Format(list), secret) {
		t.Errorf("ListProviderKeys carries the key: %v", list)
	}
	if got, err := store.Get(context.Background(), "acme", "openai"); err != nil || got != secret {
		t.Errorf("stored key = %q, %v", got, err)
	}

	t.Run("tenant isolation", func(t *testing.T) {
		list, err := c.ListProviderKeys(as(t, "globex"), &adminv1.ListProviderKeysRequest{})
		if err != nil || len(list.GetProviderKeys()) != 0 {
			t.Errorf("globex ListProviderKeys = %v, %v; want none", list, err)
		}
		_, err = c.DeleteProviderKey(as(t, "globex"), &adminv1.DeleteProviderKeyRequest{Provider: "openai"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("globex DeleteProviderKey of acme's key = %v, want NotFound", err)
		}
		if _, err := store.Get(context.Background(), "acme", "openai"); err != nil {
			t.Errorf("acme's key after globex's delete: %v", err)
		}
	})

	t.Run("validation", func(t *testing.T) {
		for _, req := range []*adminv1.SetProviderKeyRequest{
			{Provider: "anthropic", Key: "x"},
			{Provider: "openai", Key: ""},
			{Provider: "openai", Key: strings.Repeat("k", 4097)},
		} {
			_, err := c.SetProviderKey(as(t, "acme"), req)
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("SetProviderKey(%q, %d bytes) = %v, want InvalidArgument", req.GetProvider(), len(req.GetKey()), err)
			}
		}
	})

	if _, err := c.DeleteProviderKey(as(t, "acme"), &adminv1.DeleteProviderKeyRequest{Provider: "openai"}); err != nil {
		t.Fatalf("DeleteProviderKey: %v", err)
	}
	if _, err := c.DeleteProviderKey(as(t, "acme"), &adminv1.DeleteProviderKeyRequest{Provider: "openai"}); status.Code(err) != codes.NotFound {
		t.Errorf("second DeleteProviderKey = %v, want NotFound", err)
	}
	list, err = c.ListProviderKeys(as(t, "acme"), &adminv1.ListProviderKeysRequest{})
	if err != nil || len(list.GetProviderKeys()) != 1 || list.GetProviderKeys()[0].GetProvider() != "tavus" {
		t.Errorf("ListProviderKeys after delete = %v, %v", list, err)
	}
}

func TestProviderKeysWithoutMasterKey(t *testing.T) {
	t.Parallel()
	c, _ := newClient(t, false)
	_, err := c.SetProviderKey(as(t, "acme"), &adminv1.SetProviderKeyRequest{Provider: "openai", Key: "sk-x"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "LOOM_MASTER_KEY") {
		t.Errorf("SetProviderKey = %v, want FailedPrecondition naming LOOM_MASTER_KEY", err)
	}
	if _, err := c.ListProviderKeys(as(t, "acme"), &adminv1.ListProviderKeysRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ListProviderKeys = %v, want FailedPrecondition", err)
	}
	if _, err := c.DeleteProviderKey(as(t, "acme"), &adminv1.DeleteProviderKeyRequest{Provider: "openai"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeleteProviderKey = %v, want FailedPrecondition", err)
	}
}

// TestCallerWithoutTenant: the handlers read their tenant with principal.TenantOf, so the server refuses a
// principal without a tenant before any handler runs. The server has no stores: a handler that ran would answer
// Internal (a nil store) or FailedPrecondition (no master key).
func TestCallerWithoutTenant(t *testing.T) {
	t.Parallel()
	noTenant := func(*http.Request) (principal.Principal, error) {
		return principal.Principal{Subject: "s", Roles: []string{"admin"}}, nil
	}
	srv := rpcservertest.Start(t, rpcserver.Config{}, noTenant, admin.New(slog.New(slog.DiscardHandler), nil, nil, nil, authn.ModeRequired).Service())
	c := adminv1.NewAdminServiceClient(srv.GRPCConn(t))
	if _, err := c.ListApiKeys(t.Context(), &adminv1.ListApiKeysRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListApiKeys without a tenant: %v, want Unauthenticated", err)
	}
	if _, err := c.SetProviderKey(t.Context(), &adminv1.SetProviderKeyRequest{Provider: "gemini", Key: "k"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("SetProviderKey without a tenant: %v, want Unauthenticated", err)
	}
}
