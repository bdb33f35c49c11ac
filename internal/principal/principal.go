// Package principal carries the identity of a caller (tenant, subject, roles) through a context.
//
// Authentication fills it in at the edge of the server; every store query is scoped by its Tenant. Services never
// read a tenant from a request field.
package principal

import (
	"context"
	"errors"
)

// Principal is an authenticated caller. The zero value is not a valid principal.
type Principal struct {
	// Tenant scopes every resource the caller can see. Never empty for a valid principal.
	Tenant string
	// Subject names the caller within its tenant (a user, an API key id, a service).
	Subject string
	// Roles the caller holds, for example "admin", "writer", "reader".
	Roles []string
}

// Local is the principal that the embedded development mode assigns to every call.
var Local = Principal{Tenant: "local", Subject: "local-dev", Roles: []string{"admin"}}

type contextKey struct{}

// NewContext returns a copy of ctx that carries p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, contextKey{}, p)
}

// FromContext returns the principal carried by ctx, and whether there was one with a tenant.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(contextKey{}).(Principal)
	return p, ok && p.Tenant != ""
}

// ErrNoPrincipal is returned by [Tenant] when the context carries no authenticated caller. Handlers map it to
// Unauthenticated.
var ErrNoPrincipal = errors.New("no authenticated caller")

// Tenant returns the tenant of the caller ctx carries, or ErrNoPrincipal.
func Tenant(ctx context.Context) (string, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return "", ErrNoPrincipal
	}
	return p.Tenant, nil
}

// TenantOf returns the tenant of the caller ctx carries, or "" when there is none. It is how a Connect handler
// reads its tenant: rpcserver's authz interceptor refuses every call without an authenticated principal before
// the handler runs (Unauthenticated), so the handler has no error branch to write. Code that can run outside a
// handler (workers, tools, tests) uses [Tenant] and handles ErrNoPrincipal.
func TenantOf(ctx context.Context) string {
	p, _ := FromContext(ctx)
	return p.Tenant
}
