package principal_test

import (
	"context"
	"errors"
	"testing"

	"github.com/loom-dev/loom/internal/principal"
)

func TestTenant(t *testing.T) {
	t.Parallel()
	if _, err := principal.Tenant(context.Background()); !errors.Is(err, principal.ErrNoPrincipal) {
		t.Errorf("no principal: %v, want ErrNoPrincipal", err)
	}
	if _, err := principal.Tenant(principal.NewContext(context.Background(), principal.Principal{Subject: "s"})); !errors.Is(err, principal.ErrNoPrincipal) {
		t.Errorf("principal without a tenant: %v, want ErrNoPrincipal", err)
	}
	got, err := principal.Tenant(principal.NewContext(context.Background(), principal.Principal{Tenant: "acme"}))
	if err != nil || got != "acme" {
		t.Errorf("Tenant = %q, %v", got, err)
	}
}

func TestTenantOf(t *testing.T) {
	t.Parallel()
	if got := principal.TenantOf(context.Background()); got != "" {
		t.Errorf("no principal: TenantOf = %q, want empty", got)
	}
	if got := principal.TenantOf(principal.NewContext(context.Background(), principal.Principal{Tenant: "acme"})); got != "acme" {
		t.Errorf("TenantOf = %q, want acme", got)
	}
}
